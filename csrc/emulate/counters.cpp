#include "emulate/counters.h"

#include <algorithm>
#include <set>
#include <sstream>

namespace r2p1d::emulate {
namespace {

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h;
}

int width_index(int bytes) {
  switch (bytes) {
    case 1: return 0;
    case 2: return 1;
    case 4: return 2;
    case 8: return 3;
    default: return 4;
  }
}

// In tc::Phase's order, then the accesses outside every Scope.
constexpr const char* kPhaseNames[] = {"load_a", "load_b", "store_a", "store_b", "frag_a", "frag_b",
                                       "vectors", "epilogue", "reduce", "other"};
static_assert(sizeof(kPhaseNames) / sizeof(kPhaseNames[0]) == kPhases, "one name per tc::Phase, and other");
static_assert(static_cast<int>(tc::Phase::kVectors) == 6 && static_cast<int>(tc::Phase::kReduce) == 8,
              "kPhaseNames follows tc::Phase");

}  // namespace

void Tally::add(const Tally& o) {
  requests += o.requests;
  wavefronts += o.wavefronts;
  ideal_wavefronts += o.ideal_wavefronts;
  sectors += o.sectors;
  bytes += o.bytes;
  for (int i = 0; i < 5; ++i) width[i] += o.width[i];
}

void Counts::add(const Counts& o) {
  for (int p = 0; p < kPhases; ++p)
    for (int s = 0; s < 2; ++s)
      for (int m = 0; m < 2; ++m) tally[p][s][m].add(o.tally[p][s][m]);
  mmas += o.mmas;
  ctas += o.ctas;
}

Counters::Counters(int threads) : lanes_(threads) {}

void Counters::begin_cta(uintptr_t smem, size_t bytes) {
  smem_ = smem;
  smem_bytes_ = bytes;
  ++counts_.ctas;
}

void Counters::step_begin() {
  records_.clear();
  for (Lane& l : lanes_) l.seen.clear();
}

void Counters::push_lane(Lane& l, int value) {
  l.path.push_back(mix(l.path.empty() ? 0 : l.path.back(), static_cast<uint64_t>(value) + 1));
  l.scopes.push_back(value);
}

void Counters::pop_lane(Lane& l) {
  l.path.pop_back();
  l.scopes.pop_back();
}

void Counters::push_warp(int warp, int value) {
  for (int i = 0; i < 32; ++i) push_lane(lanes_[warp * 32 + i], value);
}

void Counters::pop_warp(int warp) {
  for (int i = 0; i < 32; ++i) pop_lane(lanes_[warp * 32 + i]);
}

void Counters::access(uintptr_t a, int bytes, tc::MemOp op, int line) {
  Lane& l = lanes_[tid_];
  const uint64_t site = mix(l.path.empty() ? 0 : l.path.back(), static_cast<uint64_t>(line) << 1 | static_cast<uint64_t>(op));
  const uint64_t key = mix(site, static_cast<uint64_t>(l.seen[site]++));
  const int phase = l.scopes.empty() ? kPhases - 1 : std::min(l.scopes.front(), kPhases - 1);
  const int space = a >= smem_ && a < smem_ + smem_bytes_ ? kShared : kGlobal;
  records_.push_back({tid_ / 32, tid_ % 32, key, a, bytes, phase, space, static_cast<int>(op)});
}

void Counters::step_end() {
  std::sort(records_.begin(), records_.end(), [](const Record& x, const Record& y) {
    if (x.warp != y.warp) return x.warp < y.warp;
    if (x.key != y.key) return x.key < y.key;
    return x.lane < y.lane;
  });
  for (size_t i = 0; i < records_.size();) {
    size_t j = i + 1;
    while (j < records_.size() && records_[j].warp == records_[i].warp && records_[j].key == records_[i].key) ++j;
    instruction(&records_[i], &records_[j - 1] + 1);
    i = j;
  }
  records_.clear();
}

// One warp instruction: the accesses of its active lanes, in lane order.
void Counters::instruction(const Record* first, const Record* last) {
  Tally& t = counts_.tally[first->phase][first->space][first->op];
  ++t.requests;
  ++t.width[width_index(first->bytes)];
  if (first->space == kGlobal) {
    // Bytes requested: distinct bytes (lanes reading the same address are served once).
    std::set<uintptr_t> sectors, bytes;
    for (const Record* r = first; r != last; ++r) {
      for (uintptr_t s = r->addr >> 5; s <= (r->addr + r->bytes - 1) >> 5; ++s) sectors.insert(s);
      for (uintptr_t b = r->addr; b < r->addr + r->bytes; ++b) bytes.insert(b);
    }
    t.sectors += static_cast<int64_t>(sectors.size());
    t.bytes += static_cast<int64_t>(bytes.size());
    return;
  }
  // Shared memory: lanes per phase by access width.
  const int per_phase = first->bytes <= 4 ? 32 : first->bytes == 8 ? 16 : 8;
  for (int phase = 0; phase < 32 / per_phase; ++phase) {
    std::set<uintptr_t> words;
    std::set<uintptr_t> bytes;
    for (const Record* r = first; r != last; ++r) {
      if (r->lane / per_phase != phase) continue;
      for (uintptr_t w = r->addr >> 2; w <= (r->addr + r->bytes - 1) >> 2; ++w) words.insert(w);
      for (uintptr_t b = r->addr; b < r->addr + r->bytes; ++b) bytes.insert(b);
    }
    if (words.empty()) continue;
    int per_bank[32] = {0};
    int most = 0;
    for (uintptr_t w : words) most = std::max(most, ++per_bank[(w - (smem_ >> 2)) % 32]);
    t.wavefronts += most;
    t.ideal_wavefronts += static_cast<int64_t>((bytes.size() + 127) / 128);
  }
}

CountRegistry& CountRegistry::get() {
  static CountRegistry r;
  return r;
}

void CountRegistry::add(const std::string& kernel, const std::string& plan, int64_t ctas_total, const Counts& c) {
  std::ostringstream s;
  s << "{\"kernel\": \"" << kernel << "\", \"plan\": " << plan << ", \"ctas\": " << ctas_total
    << ", \"ctas_counted\": " << c.ctas << ", \"mmas\": " << c.mmas << ", \"classes\": [";
  bool first = true;
  for (int p = 0; p < kPhases; ++p)
    for (int sp = 0; sp < 2; ++sp)
      for (int m = 0; m < 2; ++m) {
        const Tally& t = c.tally[p][sp][m];
        if (t.requests == 0) continue;
        s << (first ? "" : ", ") << "{\"phase\": \"" << kPhaseNames[p] << "\", \"space\": \""
          << (sp == kShared ? "shared" : "global") << "\", \"op\": \"" << (m == 0 ? "read" : "write")
          << "\", \"requests\": " << t.requests << ", \"wavefronts\": " << t.wavefronts
          << ", \"ideal_wavefronts\": " << t.ideal_wavefronts << ", \"sectors\": " << t.sectors
          << ", \"bytes\": " << t.bytes << ", \"widths\": [" << t.width[0] << ", " << t.width[1] << ", "
          << t.width[2] << ", " << t.width[3] << ", " << t.width[4] << "]}";
        first = false;
      }
  s << "]}";
  std::lock_guard<std::mutex> lock(mutex_);
  launches_.push_back(s.str());
}

std::string CountRegistry::take() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string out = "[";
  for (size_t i = 0; i < launches_.size(); ++i) out += (i ? ",\n" : "") + launches_[i];
  launches_.clear();
  return out + "]";
}

}  // namespace r2p1d::emulate
