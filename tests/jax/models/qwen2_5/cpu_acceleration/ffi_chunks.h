// SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
//
// SPDX-License-Identifier: Apache-2.0

// Work cut into chunks that the calling thread and XLA's intra-op pool take
// from one counter, for the CPU FFI kernels. The caller never waits on a task
// that has not started (the pool's threads may all be busy with other devices'
// work on a simulated mesh): it takes chunks itself until none are left and
// then waits only for chunks already being computed.

#ifndef CPU_ACCELERATION_FFI_CHUNKS_H_
#define CPU_ACCELERATION_FFI_CHUNKS_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi_chunks {

struct Chunks {
  std::atomic<int64_t> next{0};
  int64_t count = 0;
  int64_t done = 0;
  std::mutex mu;
  std::condition_variable all_done;

  template <typename F> void take(F &&work) {
    int64_t mine = 0;
    for (int64_t c; (c = next.fetch_add(1)) < count; ++mine)
      work(c);
    std::lock_guard<std::mutex> lock(mu);
    done += mine;
    if (done == count)
      all_done.notify_all();
  }
};

// work(c) for every chunk c in [0, count), on this thread and the pool's;
// returns when all are done.
template <typename F>
void run(xla::ffi::ThreadPool &pool, int64_t count, F work) {
  if (count <= 0)
    return;
  auto chunks = std::make_shared<Chunks>();
  chunks->count = count;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count - 1);
  for (int64_t t = 0; t < helpers; ++t)
    pool.Schedule([chunks, work] { chunks->take(work); });
  chunks->take(work);
  std::unique_lock<std::mutex> lock(chunks->mu);
  chunks->all_done.wait(lock, [&] { return chunks->done == chunks->count; });
}

} // namespace ffi_chunks

#endif // CPU_ACCELERATION_FFI_CHUNKS_H_
