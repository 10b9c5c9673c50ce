// Runs the CUDA kernels of csrc/splat_cuda_kernels.cuh and csrc/stroke_cuda_kernels.cuh on the CPU,
// so that their indexing, warp shuffles, barriers and atomics are tested where there is no GPU
// (tests/test_cuda_emulated.py builds this file with the host C++ compiler and calls it through ctypes).
//
// Each block runs on its own, its threads as fibers (ucontext) on one OS thread. A fiber runs until
// it waits for others: at __syncthreads (every thread of the block) or at a warp shuffle, ballot or
// __syncwarp (all 32 lanes of its warp; the kernels use full masks only). Fibers resume in index
// order or, after set_schedule_seed, in a seeded random order each round. Everything else a thread
// does runs without interruption, so atomics are plain read-modify-writes. A barrier that some thread never reaches (a divergent
// __syncthreads or shuffle, undefined on a GPU) is reported as an error, never waited out.
// __shared__ arrays become function statics, which every fiber of the running block shares.
//
// Not emulated: the PTX of keep_greater<float> (its C++ twin runs instead: the same arithmetic),
// --use_fast_math's __expf and logf (std::exp and std::log run), memory ordering between blocks
// (blocks run one after another), timing.
#include <ucontext.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

// --- the CUDA built-ins the kernels use ---------------------------------------------------------

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) int4 {
  int x, y, z, w;
};

uint3 threadIdx, blockIdx;  // set for each fiber before it resumes
dim3 blockDim;

using std::fma;  // the float overloads, as CUDA's: not the double ones of <math.h>
using std::isfinite;
using std::log;
template <typename T>
T min(T a, T b) { return b < a ? b : a; }
template <typename T>
T max(T a, T b) { return a < b ? b : a; }
inline float __expf(float x) { return std::exp(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
inline int atomicOr(int* address, int value) {
  const int old = *address;
  *address = old | value;
  return old;
}

namespace emulator {

struct Barrier {
  int expected = 0, arrived = 0;
  unsigned generation = 0;
};

struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  uint3 index;
  bool done = false;
  const char* waiting_at = nullptr;  // what it waits for, while it waits
};

struct Block {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  Barrier threads;
  std::vector<Barrier> warps;
  std::vector<std::array<uint64_t, 32>> lanes;  // one exchange slot per lane of each warp
  bool progressed = false;                       // in the scheduler's current round
  std::string error;                             // set by a fiber that failed
  std::function<void()> body;
};

Block block;
constexpr size_t kStackBytes = 128 * 1024;
// 0: threads resume in index order; otherwise each round of the scheduler resumes them in an order
// drawn from this seed. CUDA orders threads only at barriers, so a correct kernel gives the same
// result either way, up to the order of its atomic additions.
unsigned schedule_seed = 0;

int linear_thread() {
  return int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}

void wait(Barrier& barrier, const char* what) {
  block.progressed = true;  // an arrival
  const unsigned generation = barrier.generation;
  if (++barrier.arrived == barrier.expected) {
    barrier.arrived = 0;
    ++barrier.generation;
    return;
  }
  block.current->waiting_at = what;
  while (barrier.generation == generation) swapcontext(&block.current->context, &block.scheduler);
  block.current->waiting_at = nullptr;
}

void fiber_main() {
  block.body();
  block.current->done = true;
  block.progressed = true;
}  // returns to the scheduler through uc_link

// Runs `body` once per thread of one block; throws if its threads wait for each other forever.
void run_block(dim3 threads, const std::function<void()>& body) {
  const int count = int(threads.x * threads.y * threads.z);
  if (count % 32 != 0) throw std::runtime_error("blocks of whole warps only");
  block.body = body;
  block.error.clear();
  block.fibers.resize(count);
  block.threads = {count, 0, 0};
  block.warps.assign(count / 32, Barrier{32, 0, 0});
  block.lanes.resize(count / 32);
  for (int t = 0; t < count; ++t) {
    Fiber& fiber = block.fibers[t];
    fiber.stack.resize(kStackBytes);
    fiber.index = {unsigned(t % threads.x), unsigned(t / threads.x % threads.y), unsigned(t / (threads.x * threads.y))};
    fiber.done = false;
    fiber.waiting_at = nullptr;
    getcontext(&fiber.context);
    fiber.context.uc_stack.ss_sp = fiber.stack.data();
    fiber.context.uc_stack.ss_size = fiber.stack.size();
    fiber.context.uc_stack.ss_flags = 0;
    fiber.context.uc_link = &block.scheduler;
    makecontext(&fiber.context, fiber_main, 0);
  }
  std::vector<int> order(count);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 random(schedule_seed + blockIdx.x);
  for (;;) {
    bool alive = false;
    block.progressed = false;
    if (schedule_seed != 0) std::shuffle(order.begin(), order.end(), random);
    for (const int t : order) {
      Fiber& fiber = block.fibers[t];
      if (fiber.done) continue;
      alive = true;
      block.current = &fiber;
      threadIdx = fiber.index;
      swapcontext(&block.scheduler, &fiber.context);
      if (!block.error.empty()) throw std::runtime_error(block.error);
    }
    if (!alive) return;
    if (!block.progressed) {
      std::string stuck;
      for (int t = 0; t < count; ++t) {
        const Fiber& fiber = block.fibers[t];
        stuck += "thread " + std::to_string(t) + ": " + (fiber.done ? "exited" : fiber.waiting_at) + "; ";
        if (stuck.size() > 600) break;
      }
      throw std::runtime_error("block " + std::to_string(blockIdx.x) + " never passes a barrier: " + stuck);
    }
  }
}

// Publishes this lane's 64 bits to its warp, waits for all 32 lanes, and returns read(slots, lane).
template <typename Read>
auto across_warp(uint64_t bits, const char* what, Read read) {
  const int thread = linear_thread(), warp = thread / 32, lane = thread % 32;
  block.lanes[warp][lane] = bits;
  wait(block.warps[warp], what);
  const auto result = read(block.lanes[warp], lane);
  wait(block.warps[warp], what);  // every lane has read before the slots are written again
  return result;
}

// Lane source_lane's `value`, or this lane's own where source_lane is outside the warp.
template <typename T>
T from_lane(T value, int source_lane, const char* what) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = across_warp(bits, what, [&](const auto& slots, int lane) {
    return slots[source_lane >= 0 && source_lane < 32 ? source_lane : lane];
  });
  T result;
  std::memcpy(&result, &bits, sizeof(T));
  return result;
}

// Ends the calling fiber with an error the scheduler raises; nothing unwinds across fibers.
[[noreturn]] void fail(const std::string& error) {
  block.error = error;
  block.current->done = true;
  setcontext(&block.scheduler);
  std::abort();  // setcontext returns only if it failed
}

void check_full(unsigned mask) {
  if (mask != 0xffffffffu) fail("the emulator supports full-warp masks only");
}

}  // namespace emulator

inline void __syncthreads() { emulator::wait(emulator::block.threads, "__syncthreads"); }
template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta) {
  emulator::check_full(mask);
  return emulator::from_lane(value, emulator::linear_thread() % 32 + int(delta), "__shfl_down_sync");
}
template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta) {
  emulator::check_full(mask);
  return emulator::from_lane(value, emulator::linear_thread() % 32 - int(delta), "__shfl_up_sync");
}
template <typename T>
T __shfl_sync(unsigned mask, T value, int source_lane) {
  emulator::check_full(mask);
  return emulator::from_lane(value, source_lane, "__shfl_sync");
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  emulator::check_full(mask);
  return emulator::from_lane(value, (emulator::linear_thread() % 32) ^ lane_mask, "__shfl_xor_sync");
}
inline void __syncwarp() {
  emulator::across_warp(0, "__syncwarp", [](const auto&, int) { return 0; });
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  emulator::check_full(mask);
  return emulator::across_warp(predicate != 0, "__ballot_sync", [](const auto& slots, int) {
    unsigned ballot = 0;
    for (int lane = 0; lane < 32; ++lane) ballot |= unsigned(slots[lane]) << lane;
    return ballot;
  });
}

#include "splat_cuda_kernels.cuh"
#include "stroke_cuda_kernels.cuh"

// --- the entry points ---------------------------------------------------------------------------

namespace {

using namespace splatkern::kernels;

// launch(what, kernel, blocks, threads, args...) as splat_cuda_kernels.cuh's launch_* call it:
// every block of the grid, one after another.
auto emulated_launch = [](const char* /*what*/, auto kernel, int64_t blocks, dim3 threads, auto... args) {
  blockDim = threads;
  for (int64_t b = 0; b < blocks; ++b) {
    blockIdx = {unsigned(b), 0, 0};
    emulator::run_block(threads, [&] { kernel(args...); });
  }
};

int fail(const std::exception& error, char* message, int message_size) {
  std::snprintf(message, message_size, "%s", error.what());
  return 1;
}

template <typename scalar_t>
int forward(const scalar_t* means, const scalar_t* sigmas, const scalar_t* amps, int64_t batch, int64_t n_markers,
            int64_t height, int64_t width, scalar_t* image, int32_t* index, int32_t* flaws, char* message,
            int message_size) {
  try {
    launch_forward(emulated_launch, means, sigmas, amps, batch, int(n_markers), int(height), int(width), image, index,
                   flaws);
    return 0;
  } catch (const std::exception& error) {
    return fail(error, message, message_size);
  }
}

// The gradients must arrive zeroed (launch_backward's rule for the atomic kernel).
template <typename scalar_t>
int backward(int64_t deterministic, const scalar_t* grad_image, const scalar_t* means, const scalar_t* sigmas,
             const scalar_t* amps, const int32_t* index, int64_t batch, int64_t n_markers, int64_t height,
             int64_t width, scalar_t* grad_means, scalar_t* grad_sigmas, scalar_t* grad_amps, int32_t* bad_index,
             char* message, int message_size) {
  try {
    const int64_t pixels = height * width;
    std::vector<Terms<scalar_t>> partials(deterministic ? deterministic_partials(batch, pixels, n_markers) : 0);
    launch_backward(emulated_launch, deterministic != 0, grad_image, means, sigmas, amps, index, batch, int(n_markers),
                    pixels, int(width), grad_means, grad_sigmas, grad_amps, partials.data(), bad_index);
    return 0;
  } catch (const std::exception& error) {
    return fail(error, message, message_size);
  }
}

// The soft composites (composite: splatkern::Composite, not kMax; N = 0 allowed). The forward writes
// the image and the state [B, kSoftStatePlanes, H, W] the backward reads (`saved`).
template <typename scalar_t>
int soft_forward(int64_t composite, double temperature, const scalar_t* means, const scalar_t* sigmas,
                 const scalar_t* amps, int64_t batch, int64_t n_markers, int64_t height, int64_t width,
                 scalar_t* image, scalar_t* saved, int32_t* flaws, char* message, int message_size) {
  try {
    launch_soft_forward(emulated_launch, splatkern::Composite(composite), temperature, means, sigmas, amps, batch,
                        int(n_markers), int(height), int(width), image, saved, flaws);
    return 0;
  } catch (const std::exception& error) {
    return fail(error, message, message_size);
  }
}

// The gradients must arrive zeroed (launch_soft_backward's rule for the atomic kernel).
template <typename scalar_t>
int soft_backward(int64_t deterministic, int64_t composite, double temperature, const scalar_t* grad_image,
                  const scalar_t* means, const scalar_t* sigmas, const scalar_t* amps, const scalar_t* saved,
                  int64_t batch, int64_t n_markers, int64_t height, int64_t width, scalar_t* grad_means,
                  scalar_t* grad_sigmas, scalar_t* grad_amps, char* message, int message_size) {
  try {
    std::vector<Terms<scalar_t>> partials(
        deterministic ? soft_deterministic_partials<scalar_t>(batch, height, width, n_markers) : 0);
    launch_soft_backward(emulated_launch, splatkern::Composite(composite), temperature, deterministic != 0,
                         grad_image, means, sigmas, amps, saved, batch, int(n_markers), int(height), int(width),
                         grad_means, grad_sigmas, grad_amps, partials.data());
    return 0;
  } catch (const std::exception& error) {
    return fail(error, message, message_size);
  }
}

// stroke_render's pair (composite: splatkern::Composite; S >= 1). The forward writes the image and
// `index` (max) or the soft state `saved`; the backward takes the same and writes every gradient,
// its deterministic partials bounded by partials_bytes (0: the op's kDeterministicPartialsBytes).
template <typename scalar_t>
int stroke_forward(int64_t composite, double temperature, const scalar_t* paths, const scalar_t* sigmas,
                   const scalar_t* amps, int64_t batch, int64_t n_strokes, int64_t n_vertices, int64_t height,
                   int64_t width, scalar_t* image, int32_t* index, scalar_t* saved, int32_t* flaws, char* message,
                   int message_size) {
  try {
    launch_stroke_forward(emulated_launch, splatkern::Composite(composite), temperature, paths, sigmas, amps, batch,
                          int(n_strokes), int(n_vertices), int(height), int(width), image, index, saved, flaws);
    return 0;
  } catch (const std::exception& error) {
    return fail(error, message, message_size);
  }
}

template <typename scalar_t>
int stroke_backward(int64_t deterministic, int64_t partials_bytes, int64_t composite, double temperature,
                    const scalar_t* grad_image, const scalar_t* paths, const scalar_t* sigmas, const scalar_t* amps,
                    const int32_t* index, const scalar_t* saved, int64_t batch, int64_t n_strokes,
                    int64_t n_vertices, int64_t height, int64_t width, scalar_t* grad_paths, scalar_t* grad_sigmas,
                    scalar_t* grad_amps, int32_t* bad_index, char* message, int message_size) {
  try {
    const int64_t n_segments = n_strokes * std::max<int64_t>(n_vertices - 1, 1);
    const auto plan = stroke_backward_plan<scalar_t>(deterministic != 0, batch, height, width, n_segments,
                                                     partials_bytes > 0 ? partials_bytes : splatkern::kDeterministicPartialsBytes);
    std::vector<scalar_t> sums(plan.sums);
    launch_stroke_backward(emulated_launch, plan, splatkern::Composite(composite), temperature, deterministic != 0,
                           grad_image, paths, sigmas, amps, index, saved, batch, int(n_strokes), int(n_vertices),
                           int(height), int(width), sums.data(), grad_paths, grad_sigmas, grad_amps, bad_index);
    return 0;
  } catch (const std::exception& error) {
    return fail(error, message, message_size);
  }
}

}  // namespace

extern "C" {
void set_schedule_seed(unsigned seed) { emulator::schedule_seed = seed; }
int forward_float(const float* m, const float* s, const float* a, int64_t b, int64_t n, int64_t h, int64_t w, float* image,
                  int32_t* index, int32_t* flaws, char* message, int size) {
  return forward(m, s, a, b, n, h, w, image, index, flaws, message, size);
}
int forward_double(const double* m, const double* s, const double* a, int64_t b, int64_t n, int64_t h, int64_t w,
                   double* image, int32_t* index, int32_t* flaws, char* message, int size) {
  return forward(m, s, a, b, n, h, w, image, index, flaws, message, size);
}
int backward_float(int64_t det, const float* g, const float* m, const float* s, const float* a, const int32_t* index,
                   int64_t b, int64_t n, int64_t h, int64_t w, float* gm, float* gs, float* ga, int32_t* bad,
                   char* message, int size) {
  return backward(det, g, m, s, a, index, b, n, h, w, gm, gs, ga, bad, message, size);
}
int backward_double(int64_t det, const double* g, const double* m, const double* s, const double* a, const int32_t* index,
                    int64_t b, int64_t n, int64_t h, int64_t w, double* gm, double* gs, double* ga, int32_t* bad,
                    char* message, int size) {
  return backward(det, g, m, s, a, index, b, n, h, w, gm, gs, ga, bad, message, size);
}
int soft_forward_float(int64_t c, double t, const float* m, const float* s, const float* a, int64_t b, int64_t n,
                       int64_t h, int64_t w, float* image, float* saved, int32_t* flaws, char* message, int size) {
  return soft_forward(c, t, m, s, a, b, n, h, w, image, saved, flaws, message, size);
}
int soft_forward_double(int64_t c, double t, const double* m, const double* s, const double* a, int64_t b, int64_t n,
                        int64_t h, int64_t w, double* image, double* saved, int32_t* flaws, char* message, int size) {
  return soft_forward(c, t, m, s, a, b, n, h, w, image, saved, flaws, message, size);
}
int soft_backward_float(int64_t det, int64_t c, double t, const float* g, const float* m, const float* s,
                        const float* a, const float* saved, int64_t b, int64_t n, int64_t h, int64_t w, float* gm,
                        float* gs, float* ga, char* message, int size) {
  return soft_backward(det, c, t, g, m, s, a, saved, b, n, h, w, gm, gs, ga, message, size);
}
int soft_backward_double(int64_t det, int64_t c, double t, const double* g, const double* m, const double* s,
                         const double* a, const double* saved, int64_t b, int64_t n, int64_t h, int64_t w,
                         double* gm, double* gs, double* ga, char* message, int size) {
  return soft_backward(det, c, t, g, m, s, a, saved, b, n, h, w, gm, gs, ga, message, size);
}
int stroke_forward_float(int64_t c, double t, const float* p, const float* s, const float* a, int64_t b, int64_t n,
                         int64_t v, int64_t h, int64_t w, float* image, int32_t* index, float* saved, int32_t* flaws,
                         char* message, int size) {
  return stroke_forward(c, t, p, s, a, b, n, v, h, w, image, index, saved, flaws, message, size);
}
int stroke_forward_double(int64_t c, double t, const double* p, const double* s, const double* a, int64_t b, int64_t n,
                          int64_t v, int64_t h, int64_t w, double* image, int32_t* index, double* saved,
                          int32_t* flaws, char* message, int size) {
  return stroke_forward(c, t, p, s, a, b, n, v, h, w, image, index, saved, flaws, message, size);
}
int stroke_backward_float(int64_t det, int64_t budget, int64_t c, double t, const float* g, const float* p,
                          const float* s, const float* a, const int32_t* index, const float* saved, int64_t b,
                          int64_t n, int64_t v, int64_t h, int64_t w, float* gp, float* gs, float* ga, int32_t* bad,
                          char* message, int size) {
  return stroke_backward(det, budget, c, t, g, p, s, a, index, saved, b, n, v, h, w, gp, gs, ga, bad, message, size);
}
int stroke_backward_double(int64_t det, int64_t budget, int64_t c, double t, const double* g, const double* p,
                           const double* s, const double* a, const int32_t* index, const double* saved, int64_t b,
                           int64_t n, int64_t v, int64_t h, int64_t w, double* gp, double* gs, double* ga,
                           int32_t* bad, char* message, int size) {
  return stroke_backward(det, budget, c, t, g, p, s, a, index, saved, b, n, v, h, w, gp, gs, ga, bad, message, size);
}
}
