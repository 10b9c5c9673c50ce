/* The CPU's limit for splat_render's forward: the separable formulation's work per marker-pixel
 * pair (one multiply, one compare, two selects) with nothing else — no exponentials, no output
 * written to memory, every operand in L1. bench/limits.py compiles this file with
 * -O3 -march=native and times it on as many threads as torch uses; README.md explains why. */
#include <stdint.h>

enum { kWidth = 64, kMarkers = 64 }; /* 64 pixels = 4 AVX-512 vectors; 16 KiB of factors per thread */

/* Runs `reps` passes over kMarkers x kWidth pairs on each of `threads` threads and returns a
 * checksum of the results, so the compiler cannot drop the work. */
double multiply_max(int threads, int64_t reps) {
  double checksum = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : checksum)
  {
    float cols[kMarkers * kWidth], rows[kMarkers], best[kWidth];
    int32_t win[kWidth];
    for (int i = 0; i < kMarkers * kWidth; ++i) cols[i] = (float)((i * 7919) % 1000) / 1000.0f;
    for (int n = 0; n < kMarkers; ++n) rows[n] = (float)((n * 104729) % 997) / 997.0f;
    for (int64_t rep = 0; rep < reps; ++rep) {
      for (int j = 0; j < kWidth; ++j) {
        best[j] = rows[0] * cols[j];
        win[j] = 0;
      }
      for (int n = 1; n < kMarkers; ++n) {
        const float row = rows[n];
        const float* c = cols + n * kWidth;
        for (int j = 0; j < kWidth; ++j) {
          /* branch-free, as in csrc/splat_cpu.cpp: a conditional store would make GCC branch */
          const float value = row * c[j], current = best[j];
          const int32_t take = -(int32_t)(value > current);
          best[j] = value > current ? value : current;
          win[j] = (n & take) | (win[j] & ~take);
        }
      }
      /* each pass depends on the last (nothing to hoist); factors stay in [0.5, 1], far from denormals */
      rows[rep % kMarkers] = 0.5f + 0.5f * best[rep % kWidth];
      checksum += win[rep % kWidth];
    }
  }
  return checksum;
}

/* Marker-pixel pairs per call of multiply_max per thread and pass. */
int64_t multiply_max_pairs_per_rep(void) { return (int64_t)kMarkers * kWidth; }
