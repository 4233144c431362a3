// A zero-filled, 64-byte aligned buffer for large scratch data, taken from and given back to the operating system
// directly (small ones from the heap).
//
// Why not std::vector: glibc keeps freed blocks of tens of MB in its heap (its mmap threshold grows with every
// such free), so a call's packed copy of the rows would stay in the process's resident memory after the call and
// add to the next allocation's peak. Pages mapped here are returned when the buffer dies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define HYPERLOSS_HAS_MMAP 1
#endif

namespace hyperloss::cpu {

template <typename T>
class PageBuffer {
 public:
  PageBuffer() = default;
  explicit PageBuffer(size_t count) : count_(count) {
    if (count == 0) return;
#ifdef HYPERLOSS_HAS_MMAP
    if (count * sizeof(T) >= kMapBytes) {
      map(count * sizeof(T));
      return;
    }
#endif
    // Whole cache lines for the vector loads of the tile kernels: the heap gives 16-byte alignment.
    constexpr size_t kPad = kAlignment / sizeof(T);
    fallback_.assign(count + kPad, T(0));
    const uintptr_t address = reinterpret_cast<uintptr_t>(fallback_.data());
    data_ = fallback_.data() + ((kAlignment - address % kAlignment) % kAlignment) / sizeof(T);
  }
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;
  PageBuffer(PageBuffer&& other) noexcept { *this = std::move(other); }
  PageBuffer& operator=(PageBuffer&& other) noexcept {
    if (this != &other) {
      release();
      count_ = other.count_;
      mapped_ = other.mapped_;
      fallback_ = std::move(other.fallback_);  // the same heap block: data_ still points into it
      data_ = other.data_;
      other.data_ = nullptr;
      other.count_ = 0;
      other.mapped_ = false;
    }
    return *this;
  }
  ~PageBuffer() { release(); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  T& operator[](size_t i) { return data_[i]; }

 private:
  static constexpr size_t kMapBytes = size_t(1) << 20;
  static constexpr size_t kHugeBytes = size_t(2) << 20;  // x86-64's huge page
  static constexpr size_t kAlignment = 64;
  static_assert(kAlignment % sizeof(T) == 0, "whole elements per alignment unit");

#ifdef HYPERLOSS_HAS_MMAP
  // Anonymous pages (zero). From kHugeBytes on, the mapping starts on a huge-page boundary and is marked for
  // transparent huge pages where the kernel offers them (Linux, THP "madvise" or "always"): far fewer page faults
  // (a 4 kB fault costs ~0.5 us, more in a VM: 3-7 ms for 8 MB) and TLB misses in the tile sweep, which visits the
  // packed rows in an order no prefetcher follows. A hint only: elsewhere it is ignored.
  void map(size_t bytes) {
    const size_t extra = bytes >= kHugeBytes ? kHugeBytes : 0;
    void* p = mmap(nullptr, bytes + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    char* start = static_cast<char*>(p);
    if (extra != 0) {  // keep [aligned, aligned + bytes): unmap the unaligned head and the rest of the tail
      char* aligned = start + (kHugeBytes - reinterpret_cast<uintptr_t>(start) % kHugeBytes) % kHugeBytes;
      if (aligned != start) munmap(start, aligned - start);
      if (aligned + bytes < start + bytes + extra) munmap(aligned + bytes, start + bytes + extra - (aligned + bytes));
      start = aligned;
#ifdef MADV_HUGEPAGE
      madvise(start, bytes, MADV_HUGEPAGE);
#endif
    }
    data_ = reinterpret_cast<T*>(start);
    mapped_ = true;
  }
#endif

  void release() {
#ifdef HYPERLOSS_HAS_MMAP
    if (mapped_) munmap(data_, count_ * sizeof(T));
#endif
    data_ = nullptr;
    mapped_ = false;
  }

  T* data_ = nullptr;
  size_t count_ = 0;
  bool mapped_ = false;
  std::vector<T> fallback_;
};

}  // namespace hyperloss::cpu
