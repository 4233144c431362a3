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
      void* p = mmap(nullptr, count * sizeof(T), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      data_ = static_cast<T*>(p);  // anonymous pages are zero
      mapped_ = true;
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
  static constexpr size_t kAlignment = 64;
  static_assert(kAlignment % sizeof(T) == 0, "whole elements per alignment unit");

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
