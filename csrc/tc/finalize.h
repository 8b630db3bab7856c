// The per-channel finalize steps after the GEMMs: the BatchNorm statistics from the spatial
// forward's moment partials, and the BatchNorm-backward vectors from the temporal input
// gradient's sums. One CTA per channel; each thread merges every kThreads-th partial in
// order, then a tree in shared memory merges the threads' results in a fixed order, all in
// double: the same bits for the same plan, on the GPU and in the emulator, which runs this
// code like the GEMMs' (written against the same executor, tc/igemm.h).
#pragma once
#include "access.h"
#include "args.h"

namespace r2p1d::tc {

template <class Derived, int kValues>
struct ChannelFinalize {
  static constexpr int kThreads = 128;
  static constexpr int kMinCtasPerSm = 4;
  struct Thread {
    double v[kValues];
  };
  struct Smem {
    double v[kValues][kThreads];
  };

  template <class Args, class Exec>
  R2P1D_HD static void run(const Args& a, int64_t channel, Smem& s, Thread* threads, Exec& ex) {
    ex.each(threads, [&](int tid, Thread& th) {
      Scope phase(Phase::kReduce);
      Derived::empty(th.v);
      for (int64_t i = tid; i < a.parts; i += kThreads) {
        const float* p = a.partials + (channel * a.parts + i) * Derived::kFloats;
        double x[kValues];
        Derived::read(p, x);
        Derived::merge(th.v, x);
      }
      R2P1D_UNROLL
      for (int q = 0; q < kValues; ++q) mem_store(&s.v[q][tid], th.v[q]);
    });
    for (int stride = kThreads / 2; stride > 0; stride /= 2) {
      ex.sync(Barrier::kFinalize);
      ex.each(threads, [&](int tid, Thread& th) {
        if (tid >= stride) return;
        Scope phase(Phase::kReduce);
        double x[kValues];
        R2P1D_UNROLL
        for (int q = 0; q < kValues; ++q) {
          th.v[q] = mem_load(&s.v[q][tid]);
          x[q] = mem_load(&s.v[q][tid + stride]);
        }
        Derived::merge(th.v, x);
        R2P1D_UNROLL
        for (int q = 0; q < kValues; ++q) mem_store(&s.v[q][tid], th.v[q]);
      });
    }
    ex.each(threads, [&](int tid, Thread& th) {
      if (tid == 0) Derived::write(a, channel, th.v);
    });
  }
};

// (count, mean, M2) partials merged with Chan's formula; the variance is biased (M2 / count).
struct MomentsFinalize : ChannelFinalize<MomentsFinalize, 3> {
  static constexpr int kFloats = 3;
  R2P1D_HD static void empty(double (&v)[3]) { v[0] = v[1] = v[2] = 0.0; }
  R2P1D_HD static void read(const float* p, double (&x)[3]) {
    x[0] = ldg(p);
    x[1] = ldg(p + 1);
    x[2] = ldg(p + 2);
  }
  R2P1D_HD static void merge(double (&v)[3], const double (&x)[3]) {
    if (x[0] == 0.0) return;
    const double n = v[0] + x[0], delta = x[1] - v[1];
    v[1] += delta * (x[0] / n);
    v[2] += x[2] + delta * delta * (v[0] * x[0] / n);
    v[0] = n;
  }
  R2P1D_HD static void write(const MomentsArgs& a, int64_t c, const double (&v)[3]) {
    mem_store(a.mean + c, static_cast<float>(v[1]));
    mem_store(a.var + c, static_cast<float>(v[0] > 0.0 ? v[2] / v[0] : 0.0));
  }
};

// (sum gpre*(y - mean), sum gpre) partials summed.
struct SumsFinalize : ChannelFinalize<SumsFinalize, 2> {
  static constexpr int kFloats = 2;
  R2P1D_HD static void empty(double (&v)[2]) { v[0] = v[1] = 0.0; }
  R2P1D_HD static void read(const float* p, double (&x)[2]) {
    x[0] = ldg(p);
    x[1] = ldg(p + 1);
  }
  R2P1D_HD static void merge(double (&v)[2], const double (&x)[2]) {
    v[0] += x[0];
    v[1] += x[1];
  }
  R2P1D_HD static void write(const SumsArgs& a, int64_t c, const double (&v)[2]) {
    if (a.grad_scale) mem_store(a.grad_scale + c, static_cast<float>(v[0]));
    if (a.grad_shift) mem_store(a.grad_shift + c, static_cast<float>(v[1]));
    if (a.grad_mean) mem_store(a.grad_mean + c, static_cast<float>(-static_cast<double>(ldg(a.scale + c)) * v[1]));
  }
};

}  // namespace r2p1d::tc
