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
  } else if (m == "skip_barrier:prologue") {
    s.skip_barrier = static_cast<int>(tc::Barrier::kPrologue);
  } else if (m == "skip_barrier:ktile") {
    s.skip_barrier = static_cast<int>(tc::Barrier::kKTile);
  } else if (m == "skip_barrier:reduction") {
    s.skip_barrier = static_cast<int>(tc::Barrier::kReduction);
  } else {
    TORCH_CHECK_VALUE(false, "r2p1d: expected R2P1D_EMULATOR_MUTATION to be none, wrong_buffer, row_bound, "
                      "divergent_barrier, vector_loads or skip_barrier:prologue|ktile|reduction, but got '", m, "'");
  }
  TORCH_CHECK_VALUE(s.checks || (s.mutation == tc::Mutation::kNone && s.skip_barrier < 0),
                    "r2p1d: R2P1D_EMULATOR_MUTATION needs the checks on (R2P1D_EMULATOR_CHECKS=on)");
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
                       const char* kernel)
    : settings_(settings), ranges_(ranges), findings_(findings), kernel_(kernel), previous_(tc::access_check) {
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
}

std::string CtaChecker::where() const {
  std::ostringstream s;
  s << "CTA (" << cta_.tile_m << ", " << cta_.tile_n << ", split " << cta_.split << "), thread " << thread_;
  return s.str();
}

void CtaChecker::report(const std::string& what) { findings_.add(where() + ": " + what); }

void CtaChecker::access(const void* p, int bytes, tc::MemOp op) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a % static_cast<uintptr_t>(bytes) != 0) {
    std::ostringstream s;
    s << "misaligned " << bytes << "-byte " << op_name(op) << " at 0x" << std::hex << a;
    report(s.str());
  }
  if (a >= smem_ && a < smem_ + smem_bytes_) {
    if (a + bytes > smem_ + smem_bytes_) {
      std::ostringstream s;
      s << bytes << "-byte shared-memory " << op_name(op) << " at offset " << a - smem_ << " runs past the "
        << smem_bytes_ << " bytes of the CTA's shared memory";
      report(s.str());
      return;
    }
    shared(a - smem_, bytes, op);
    return;
  }
  for (const Range& r : ranges_) {
    if (a >= r.begin && a + bytes <= r.end) {
      if (op == tc::MemOp::kWrite && !r.writable) report(std::string("write into the read-only tensor ") + r.name);
      return;
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
}

void CtaChecker::shared(size_t offset, int bytes, tc::MemOp op) {
  const int16_t t = static_cast<int16_t>(thread_);
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
