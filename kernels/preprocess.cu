// Fused preprocessing: stored pixels -> HU -> window -> lung mask -> area-weighted resize ->
// per-channel normalisation -> NCHW, one thread per output pixel, blockIdx.y = slice.
// The lung mask is computed on the CPU (connected components) and uploaded with the pixels.
#include "preprocess.cuh"

template <typename OutT>
__device__ void preprocess(const unsigned char* src, const unsigned char* masks, const SliceDesc* descs,
                           PrepParams p, OutT* out) {
    const int n = blockIdx.y;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    const int size = p.size;
    if (idx >= size * size) return;
    const int oy = idx / size, ox = idx % size;
    const SliceDesc d = descs[n];
    const unsigned char* mask = d.mask_offset >= 0 ? masks + d.mask_offset : nullptr;

    // Output rectangle in source coordinates.
    const double sy = (double)d.rows / size, sx = (double)d.cols / size;
    const double ay = oy * sy, by = (oy + 1) * sy, ax = ox * sx, bx = (ox + 1) * sx;
    const int y0 = (int)floor(ay), y1 = min((int)ceil(by), d.rows);
    const int x0 = (int)floor(ax), x1 = min((int)ceil(bx), d.cols);

    float acc = 0.0f;
    for (int y = y0; y < y1; ++y) {
        const float wy = (float)(fmin(by, (double)(y + 1)) - fmax(ay, (double)y));
        float row = 0.0f;
        for (int x = x0; x < x1; ++x) {
            const float wx = (float)(fmin(bx, (double)(x + 1)) - fmax(ax, (double)x));
            const int i = y * d.cols + x;
            float v = windowed(src, d, i, p.lo, p.inv_width);
            if (mask && mask[i] == 0) v = 0.0f;
            row = fmaf(wx, v, row);
        }
        acc = fmaf(wy, row, acc);
    }
    const float v = acc / (float)((by - ay) * (bx - ax));
    const long long plane = (long long)size * size;
    const long long base = (long long)n * 3 * plane + idx;
    for (int c = 0; c < 3; ++c) {
        store(out, base + c * plane, (v - p.mean[c]) * p.inv_std[c]);
    }
}

// Tiled variant: a block computes a TILE × TILE output tile. Its source footprint is windowed
// and masked once into shared memory (each source pixel read once from device memory, reads
// coalesced along rows), then every thread integrates its output rectangle from there.
// Used when the footprint fits in shared memory (the host checks); same arithmetic as above.
#define TILE 16
// Column taps kept in registers (4 suffice for 512 -> 224; more fall back to a loop).
#define MAX_TAPS 6

template <typename OutT>
__device__ void preprocess_tiled(const unsigned char* src, const unsigned char* masks, const SliceDesc* descs,
                                 PrepParams p, OutT* out) {
    extern __shared__ float tile[];
    const int n = blockIdx.z;
    const int size = p.size;
    const SliceDesc d = descs[n];
    const unsigned char* mask = d.mask_offset >= 0 ? masks + d.mask_offset : nullptr;
    const double sy = (double)d.rows / size, sx = (double)d.cols / size;
    const int oy0 = blockIdx.y * TILE, ox0 = blockIdx.x * TILE;
    const int fy0 = (int)floor(oy0 * sy), fy1 = min((int)ceil(min(oy0 + TILE, size) * sy), d.rows);
    const int fx0 = (int)floor(ox0 * sx), fx1 = min((int)ceil(min(ox0 + TILE, size) * sx), d.cols);
    const int fw = fx1 - fx0, fh = fy1 - fy0;
    // Rows by threadIdx.y, columns by threadIdx.x: no integer division in the loader.
    for (int ty = threadIdx.y; ty < fh; ty += TILE) {
        const int rowi = (fy0 + ty) * d.cols + fx0;
        for (int tx = threadIdx.x; tx < fw; tx += TILE) {
            float v = windowed(src, d, rowi + tx, p.lo, p.inv_width);
            if (mask && mask[rowi + tx] == 0) v = 0.0f;
            tile[ty * fw + tx] = v;
        }
    }
    __syncthreads();
    const int oy = oy0 + threadIdx.y, ox = ox0 + threadIdx.x;
    if (oy >= size || ox >= size) return;
    const double ay = oy * sy, by = (oy + 1) * sy, ax = ox * sx, bx = (ox + 1) * sx;
    const int y0 = (int)floor(ay), y1 = min((int)ceil(by), d.rows);
    const int x0 = (int)floor(ax), x1 = min((int)ceil(bx), d.cols);
    const int nx = x1 - x0;
    // The column weights depend on ox only: computed once (the same f64 expressions as above).
    float wxs[MAX_TAPS];
#pragma unroll
    for (int k = 0; k < MAX_TAPS; ++k) {
        wxs[k] = k < nx ? (float)(fmin(bx, (double)(x0 + k + 1)) - fmax(ax, (double)(x0 + k))) : 0.0f;
    }
    float acc = 0.0f;
    for (int y = y0; y < y1; ++y) {
        const float wy = (float)(fmin(by, (double)(y + 1)) - fmax(ay, (double)y));
        const float* row_in = tile + (y - fy0) * fw - fx0;
        float row = 0.0f;
        if (nx <= MAX_TAPS) {
#pragma unroll
            for (int k = 0; k < MAX_TAPS; ++k) {
                if (k < nx) row = fmaf(wxs[k], row_in[x0 + k], row);
            }
        } else {
            for (int x = x0; x < x1; ++x) {
                const float wx = (float)(fmin(bx, (double)(x + 1)) - fmax(ax, (double)x));
                row = fmaf(wx, row_in[x], row);
            }
        }
        acc = fmaf(wy, row, acc);
    }
    const float v = acc / (float)((by - ay) * (bx - ax));
    const long long plane = (long long)size * size;
    const long long base = (long long)n * 3 * plane + (long long)oy * size + ox;
    for (int c = 0; c < 3; ++c) {
        store(out, base + c * plane, (v - p.mean[c]) * p.inv_std[c]);
    }
}

// At most 64 registers per thread, so that four 256-thread blocks fit on an SM (ncu showed 84
// registers limiting occupancy to 25% and the kernel latency-bound).
extern "C" __global__ void __launch_bounds__(TILE * TILE, 4) preprocess_tiled_f32(const unsigned char* src, const unsigned char* masks,
                                                const SliceDesc* descs, PrepParams p, float* out) {
    preprocess_tiled<float>(src, masks, descs, p, out);
}

extern "C" __global__ void __launch_bounds__(TILE * TILE, 4) preprocess_tiled_f16(const unsigned char* src, const unsigned char* masks,
                                                const SliceDesc* descs, PrepParams p, unsigned short* out) {
    preprocess_tiled<unsigned short>(src, masks, descs, p, out);
}

extern "C" __global__ void preprocess_f32(const unsigned char* src, const unsigned char* masks,
                                          const SliceDesc* descs, PrepParams p, float* out) {
    preprocess<float>(src, masks, descs, p, out);
}

extern "C" __global__ void preprocess_f16(const unsigned char* src, const unsigned char* masks,
                                          const SliceDesc* descs, PrepParams p, unsigned short* out) {
    preprocess<unsigned short>(src, masks, descs, p, out);
}
