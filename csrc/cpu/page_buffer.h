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

constexpr size_t kHugePageBytes = size_t(2) << 20;  // x86-64's (transparent) huge page

// Marks the whole huge pages inside [data, data + bytes) for transparent huge pages where the kernel offers them
// (Linux, THP "madvise" or "always"): the pages not yet touched are then faulted 2 MiB at a time, 512x fewer faults
// than 4 kB pages (a fault costs ~0.5 us, several in a VM). A hint on the memory's paging only: contents and
// ownership are untouched, pages already present stay as they are, and elsewhere it does nothing.
inline void advise_huge_pages(void* data, size_t bytes) {
#if defined(HYPERLOSS_HAS_MMAP) && defined(MADV_HUGEPAGE)
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data), end = begin + bytes;
  const uintptr_t first = (begin + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  const uintptr_t last = end / kHugePageBytes * kHugePageBytes;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

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
  const T& operator[](size_t i) const { return data_[i]; }

 private:
  static constexpr size_t kMapBytes = size_t(1) << 20;
  static constexpr size_t kHugeBytes = kHugePageBytes;
  static constexpr size_t kAlignment = 64;
  static_assert(kAlignment % sizeof(T) == 0, "whole elements per alignment unit");

#ifdef HYPERLOSS_HAS_MMAP
  // Anonymous pages (zero). From kHugeBytes on, the mapping starts on a huge-page boundary and is marked for
  // transparent huge pages (advise_huge_pages): far fewer page faults (3-7 ms for 8 MB in a VM with 4 kB pages)
  // and TLB misses in the tile sweep, which visits the packed rows in an order no prefetcher follows.
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
      advise_huge_pages(start, bytes);
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
