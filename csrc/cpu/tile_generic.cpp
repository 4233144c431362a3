// The tile arithmetic of the uniformity kernel built for any CPU (the compiler's baseline); see uniform_tile.inc.
#define HYPERLOSS_CPU_ISA generic
#include "uniform_tile.inc"
