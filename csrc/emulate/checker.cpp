#include "emulate/checker.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <sstream>

namespace r2p1d::emulate {
namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

const char* op_name(tc::MemOp op) { return op == tc::MemOp::kRead ? "read" : "write"; }

constexpr size_t kKeptReports = 5;
constexpr int32_t kNever = -1;

}  // namespace

Settings Settings::from_env() {
  Settings s;
  const std::string checks = env("R2P1D_EMULATOR_CHECKS");
  TORCH_CHECK_VALUE(checks.empty() || checks == "on" || checks == "off",
                    "r2p1d: expected R2P1D_EMULATOR_CHECKS to be on or off, but got '", checks, "'");
  s.checks = checks != "off";
  const std::string order = env("R2P1D_EMULATOR_ORDER");
  if (order.empty() || order == "forward") {
    s.order = Order::kForward;
  } else if (order == "reverse") {
    s.order = Order::kReverse;
  } else if (order == "shuffle") {
    s.order = Order::kShuffle;
  } else {
    TORCH_CHECK_VALUE(false, "r2p1d: expected R2P1D_EMULATOR_ORDER to be forward, reverse or shuffle, but got '",
                      order, "'");
  }
  const std::string m = env("R2P1D_EMULATOR_MUTATION");
  if (m.empty() || m == "none") {
  } else if (m == "wrong_buffer") {
    s.mutation = tc::Mutation::kWrongBuffer;
  } else if (m == "row_bound") {
    s.mutation = tc::Mutation::kRowBound;
  } else if (m == "divergent_barrier") {
    s.mutation = tc::Mutation::kDivergentBarrier;
  } else if (m == "vector_loads") {
    s.mutation = tc::Mutation::kVectorLoads;
  } else if (m == "missing_wait") {
    s.mutation = tc::Mutation::kMissingWait;
  } else if (m == "no_swizzle") {
    s.mutation = tc::Mutation::kNoSwizzle;
  } else if (m.rfind("skip_barrier:", 0) == 0) {
    const std::string name = m.substr(13);
    const char* names[] = {"vectors", "prologue", "ktile", "staging", "reduction", "slots", "finalize"};
    for (int b = 0; b < 7; ++b)
      if (name == names[b]) s.skip_barrier = b;
    TORCH_CHECK_VALUE(s.skip_barrier >= 0, "r2p1d: expected skip_barrier:vectors|prologue|ktile|staging|reduction|"
                      "slots|finalize, but got '", m, "'");
  } else {
    TORCH_CHECK_VALUE(false, "r2p1d: expected R2P1D_EMULATOR_MUTATION to be none, wrong_buffer, row_bound, "
                      "divergent_barrier, vector_loads, missing_wait, no_swizzle or skip_barrier:<barrier>, but got '", m, "'");
  }
  TORCH_CHECK_VALUE(s.checks || (s.mutation == tc::Mutation::kNone && s.skip_barrier < 0),
                    "r2p1d: R2P1D_EMULATOR_MUTATION needs the checks on (R2P1D_EMULATOR_CHECKS=on)");
  const std::string counters = env("R2P1D_EMULATOR_COUNTERS");
  TORCH_CHECK_VALUE(counters.empty() || counters == "on" || counters == "off",
                    "r2p1d: expected R2P1D_EMULATOR_COUNTERS to be on or off, but got '", counters, "'");
  s.counters = counters == "on";
  TORCH_CHECK_VALUE(s.checks || !s.counters,
                    "r2p1d: R2P1D_EMULATOR_COUNTERS=on needs the checks on (R2P1D_EMULATOR_CHECKS=on)");
  const std::string sample = env("R2P1D_EMULATOR_SAMPLE");
  if (!sample.empty()) {
    char* end = nullptr;
    const long long n = std::strtoll(sample.c_str(), &end, 10);
    TORCH_CHECK_VALUE(end && *end == '\0' && n >= 0,
                      "r2p1d: expected R2P1D_EMULATOR_SAMPLE to be a count of CTAs >= 0, but got '", sample, "'");
    s.sample = n;
  }
  return s;
}

void Findings::add(std::string report) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (first_.size() < kKeptReports) first_.push_back(std::move(report));
  ++count_;
}

void Findings::raise_if_any(const char* kernel) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (count_ == 0) return;
  std::ostringstream msg;
  msg << "r2p1d emulator: " << count_ << " finding(s) in " << kernel << ":";
  for (const auto& r : first_) msg << "\n  " << r;
  if (count_ > static_cast<int64_t>(first_.size())) msg << "\n  ... and " << count_ - first_.size() << " more";
  TORCH_CHECK(false, msg.str());
}

CtaChecker::CtaChecker(const Settings& settings, const std::vector<Range>& ranges, Findings& findings,
                       const char* kernel, int threads)
    : settings_(settings), ranges_(ranges), findings_(findings), kernel_(kernel), previous_(tc::access_check),
      open_(threads), committed_(threads) {
  if (settings.counters) counters_ = std::make_unique<Counters>(threads);
  tc::access_check = this;
}

CtaChecker::~CtaChecker() { tc::access_check = previous_; }

void CtaChecker::begin_cta(const tc::TileCtx& t, void* smem, size_t bytes) {
  cta_ = t;
  smem_ = reinterpret_cast<uintptr_t>(smem);
  smem_bytes_ = bytes;
  thread_ = 0;
  epoch_ = 0;
  writer_.assign(bytes, -1);
  reader_.assign(bytes, -1);
  write_epoch_.assign(bytes, kNever);
  read_epoch_.assign(bytes, kNever);
  readers_.assign(bytes, 0);
  pending_.assign(bytes, 0);
  for (auto& o : open_) o.clear();
  for (auto& c : committed_) c.clear();
  if (counters_) counters_->begin_cta(smem_, bytes);
}

void CtaChecker::end_cta() {
  for (size_t t = 0; t < open_.size(); ++t) {
    size_t n = open_[t].size();
    for (const auto& g : committed_[t]) n += g.size();
    if (n > 0) {
      thread_ = static_cast<int>(t);
      report(std::to_string(n) + " cp.async copies still in flight when the CTA ends (a missing cp.async.wait)");
    }
  }
}

std::string CtaChecker::where() const {
  std::ostringstream s;
  s << "CTA (" << cta_.tile_m << ", " << cta_.tile_n << ", split " << cta_.split << "), thread " << thread_;
  return s.str();
}

void CtaChecker::report(const std::string& what) { findings_.add(where() + ": " + what); }

bool CtaChecker::aligned(uintptr_t a, int bytes, tc::MemOp op) {
  if (a % static_cast<uintptr_t>(bytes) == 0) return true;
  std::ostringstream s;
  s << "misaligned " << bytes << "-byte " << op_name(op) << " at 0x" << std::hex << a;
  report(s.str());
  return false;
}

bool CtaChecker::access(const void* p, int bytes, tc::MemOp op, int line) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (counters_) counters_->access(a, bytes, op, line);
  aligned(a, bytes, op);
  if (a >= smem_ && a < smem_ + smem_bytes_) {
    if (a + bytes > smem_ + smem_bytes_) {
      std::ostringstream s;
      s << bytes << "-byte shared-memory " << op_name(op) << " at offset " << a - smem_ << " runs past the "
        << smem_bytes_ << " bytes of the CTA's shared memory";
      report(s.str());
      return false;
    }
    shared(a - smem_, bytes, op);
    return true;
  }
  return global(a, bytes, op);
}

bool CtaChecker::global(uintptr_t a, int bytes, tc::MemOp op) {
  for (const Range& r : ranges_) {
    if (a >= r.begin && a + bytes <= r.end) {
      if (op == tc::MemOp::kWrite && !r.writable) {
        report(std::string("write into the read-only tensor ") + r.name);
        return false;
      }
      return true;
    }
  }
  std::ostringstream s;
  s << bytes << "-byte global " << op_name(op) << " at 0x" << std::hex << a << std::dec
    << " outside every tensor of the GEMM";
  for (const Range& r : ranges_) {
    if (a + bytes > r.begin && a < r.end + 64) {  // overlapping, or just past the end
      s << " (" << r.name << " is [0x" << std::hex << r.begin << ", 0x" << r.end << std::dec << "), "
        << r.end - r.begin << " bytes)";
    }
  }
  report(s.str());
  return false;
}

void CtaChecker::async_copy(void* dst, const void* src, bool valid, int bytes, int line) {
  const uintptr_t d = reinterpret_cast<uintptr_t>(dst), a = reinterpret_cast<uintptr_t>(src);
  if (counters_) {
    if (valid) counters_->access(a, bytes, tc::MemOp::kRead, line);
    counters_->access(d, bytes, tc::MemOp::kWrite, line);
  }
  if (valid && !(aligned(a, bytes, tc::MemOp::kRead) && global(a, bytes, tc::MemOp::kRead))) valid = false;
  if (!aligned(d, bytes, tc::MemOp::kWrite)) return;
  if (d < smem_ || d + bytes > smem_ + smem_bytes_) {
    report("cp.async destination outside the CTA's shared memory");
    return;
  }
  const size_t off = d - smem_;
  for (size_t b = off; b < off + static_cast<size_t>(bytes); ++b) {
    if (pending_[b]) {
      std::ostringstream s;
      s << "cp.async to shared-memory offset " << b << " while thread " << pending_[b] - 1
        << "'s copy there is still in flight";
      report(s.str());
      break;
    }
  }
  for (size_t b = off; b < off + static_cast<size_t>(bytes); ++b) pending_[b] = static_cast<int16_t>(thread_ + 1);
  open_[thread_].push_back({off, src, valid, bytes});
}

void CtaChecker::async_commit() {
  committed_[thread_].push_back(std::move(open_[thread_]));
  open_[thread_].clear();
}

void CtaChecker::async_wait(int pending) {
  if (pending == 0) async_commit();  // cp.async.wait_all commits the open group first
  auto& groups = committed_[thread_];
  while (static_cast<int>(groups.size()) > pending) {
    for (const Copy& c : groups.front()) land(thread_, c);
    groups.pop_front();
  }
}

// A copy lands: its bytes written by its thread, now (the race check sees the write here).
void CtaChecker::land(int thread, const Copy& c) {
  char* dst = reinterpret_cast<char*>(smem_ + c.offset);
  if (c.valid) {
    std::memcpy(dst, c.src, c.bytes);
  } else {
    std::memset(dst, 0, c.bytes);
  }
  for (size_t b = c.offset; b < c.offset + static_cast<size_t>(c.bytes); ++b) pending_[b] = 0;
  const int saved = thread_;
  thread_ = thread;
  shared(c.offset, c.bytes, tc::MemOp::kWrite);
  thread_ = saved;
}

void CtaChecker::shared(size_t offset, int bytes, tc::MemOp op) {
  const int16_t t = static_cast<int16_t>(thread_);
  for (size_t b = offset; b < offset + static_cast<size_t>(bytes); ++b) {
    if (pending_[b]) {
      std::ostringstream s;
      s << "shared-memory " << op_name(op) << " at offset " << b << " before thread " << pending_[b] - 1
        << "'s cp.async there has landed (a missing cp.async.wait_group)";
      report(s.str());
      return;
    }
  }
  for (size_t b = offset; b < offset + static_cast<size_t>(bytes); ++b) {
    const bool written_now = write_epoch_[b] == epoch_;
    if (op == tc::MemOp::kWrite) {
      const bool other_writer = written_now && writer_[b] != t;
      const bool other_reader = read_epoch_[b] == epoch_ && (readers_[b] > 1 || reader_[b] != t);
      if (other_writer || other_reader) {
        std::ostringstream s;
        s << "shared-memory race at offset " << b << ": write, and "
          << (other_writer ? "a write" : "a read") << " by thread "
          << (other_writer ? writer_[b] : reader_[b]) << " since the last barrier (interval " << epoch_ << ")";
        report(s.str());
        return;  // one report per access
      }
      writer_[b] = t;
      write_epoch_[b] = epoch_;
    } else {
      if (written_now && writer_[b] != t) {
        std::ostringstream s;
        s << "shared-memory race at offset " << b << ": read of what thread " << writer_[b]
          << " wrote since the last barrier (interval " << epoch_ << ")";
        report(s.str());
        return;
      }
      if (read_epoch_[b] != epoch_) {
        read_epoch_[b] = epoch_;
        reader_[b] = t;
        readers_[b] = 1;
      } else if (reader_[b] != t && readers_[b] < 2) {
        readers_[b] = 2;
      }
    }
  }
}

void CtaChecker::index(int64_t index, int count, int64_t limit, const char* what) {
  if (index < 0 || index + count > limit) {
    std::ostringstream s;
    s << what << ": index " << index << " (" << count << " elements) outside the " << limit << " of its array";
    report(s.str());
  }
}

}  // namespace r2p1d::emulate
