// Scratch buffers reused across kernel calls. A large buffer allocated afresh on every call
// costs one page fault per 4 KiB page when first touched: for the 14 MB transformed tiles
// of an R(2+1)D-18 conv4_x block, as long as the GEMMs that use them (bench/NOTES.md). The pool keeps the kKeep largest released buffers and hands them out again; it is
// shared by all threads and safe to use from concurrent calls. The pool is never destroyed
// (no tensor destructors run during static destruction at exit).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <mutex>
#include <vector>

namespace r2p1d::cpu {

class Scratch {
 public:
  // A buffer of at least `numel` elements of T, valid until this object is destroyed.
  template <typename T>
  static Scratch of(int64_t numel) {
    return Scratch(numel * static_cast<int64_t>(sizeof(T)));
  }
  template <typename T>
  T* data() const {  // nullptr for an empty request
    return buf_.defined() ? reinterpret_cast<T*>(buf_.data_ptr<uint8_t>()) : nullptr;
  }
  Scratch(Scratch&& other) noexcept : buf_(std::move(other.buf_)) {}
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    if (!buf_.defined()) return;
    std::lock_guard<std::mutex> lock(mutex());
    auto& pool = free_list();
    pool.push_back(std::move(buf_));
    if (pool.size() > kKeep) {  // drop the smallest: the big ones are the costly ones
      auto smallest = std::min_element(pool.begin(), pool.end(), [](const auto& a, const auto& b) {
        return a.numel() < b.numel();
      });
      pool.erase(smallest);
    }
  }

 private:
  // The most one op holds at once (fused_eval: z, the Winograd V, Y and filters, and a
  // transform's per-thread buffers, or the im2col matrices).
  static constexpr size_t kKeep = 6;
  explicit Scratch(int64_t bytes) {
    if (bytes <= 0) return;  // nothing to hand out (and no pooled buffer to tie up)
    {
      std::lock_guard<std::mutex> lock(mutex());
      auto& pool = free_list();
      auto best = pool.end();  // the smallest free buffer that is large enough
      for (auto it = pool.begin(); it != pool.end(); ++it)
        if (it->numel() >= bytes && (best == pool.end() || it->numel() < best->numel())) best = it;
      if (best != pool.end()) {
        buf_ = std::move(*best);
        pool.erase(best);
        return;
      }
    }
    buf_ = at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
  }
  static std::mutex& mutex() {
    static auto* m = new std::mutex();
    return *m;
  }
  static std::vector<at::Tensor>& free_list() {
    static auto* pool = new std::vector<at::Tensor>();
    return *pool;
  }
  at::Tensor buf_;
};

// One scratch region per thread of at::parallel_for, from the pool: the transforms' tile
// buffers (~1.4 MB per thread and batch at R(2+1)D-18's conv2_x with F(4x4)) were
// std::vectors, allocated and zero-filled in every parallel region, and glibc hands
// buffers that large back to the OS, so each was page-faulted in afresh.
template <typename T>
class PerThread {
 public:
  explicit PerThread(int64_t per_thread)
      : per_(per_thread), buf_(Scratch::of<T>(per_thread * at::get_num_threads())) {}
  // This thread's region (valid inside at::parallel_for, whose thread numbers are below
  // at::get_num_threads()).
  T* mine() const { return buf_.data<T>() + at::get_thread_num() * per_; }

 private:
  int64_t per_;
  Scratch buf_;
};

}  // namespace r2p1d::cpu
