// The tile arithmetic of the uniformity kernel built for avx512 (compiled with its flags, used only where the CPU has it); see uniform_tile.inc.
#define HYPERLOSS_CPU_ISA avx512
#include "uniform_tile.inc"
