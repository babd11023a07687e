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
// coalesced along rows; rows/columns past the image read as 0), then every thread integrates
// its output from there with the host-computed separable area weights. Used when the footprint
// fits in shared memory (the host checks).
#define TILE 16

template <typename OutT>
__device__ void preprocess_tiled(const unsigned char* src, const unsigned char* masks, const SliceDesc* descs,
                                 const int* tab_i, const float* tab_w, PrepParams p, OutT* out) {
    extern __shared__ float tile[];
    const int n = blockIdx.z;
    const int size = p.size;
    const SliceDesc d = descs[n];
    const unsigned char* mask = d.mask_offset >= 0 ? masks + d.mask_offset : nullptr;
    const int oy0 = blockIdx.y * TILE, ox0 = blockIdx.x * TILE;
    const int fy0 = tab_i[d.start_y + oy0], fx0 = tab_i[d.start_x + ox0];
    const int fh = tab_i[d.start_y + min(oy0 + TILE, size) - 1] + d.taps_y - fy0;
    const int fw = tab_i[d.start_x + min(ox0 + TILE, size) - 1] + d.taps_x - fx0;
    // Rows by threadIdx.y, columns by threadIdx.x: no integer division in the loader.
    for (int ty = threadIdx.y; ty < fh; ty += TILE) {
        const int y = fy0 + ty;
        for (int tx = threadIdx.x; tx < fw; tx += TILE) {
            const int x = fx0 + tx;
            float v = 0.0f;
            if (y < d.rows && x < d.cols) {
                const int i = y * d.cols + x;
                v = windowed(src, d, i, p.lo, p.inv_width);
                if (mask && mask[i] == 0) v = 0.0f;
            }
            tile[ty * fw + tx] = v;
        }
    }
    __syncthreads();
    const int oy = oy0 + threadIdx.y, ox = ox0 + threadIdx.x;
    if (oy >= size || ox >= size) return;
    const float* wy = tab_w + d.weight_y + oy * d.taps_y;
    const float* wx = tab_w + d.weight_x + ox * d.taps_x;
    const float* in = tile + (tab_i[d.start_y + oy] - fy0) * fw + (tab_i[d.start_x + ox] - fx0);
    float acc = 0.0f;
    for (int ky = 0; ky < d.taps_y; ++ky) {
        float row = 0.0f;
        for (int kx = 0; kx < d.taps_x; ++kx) {
            row = fmaf(wx[kx], in[kx], row);
        }
        acc = fmaf(wy[ky], row, acc);
        in += fw;
    }
    const long long plane = (long long)size * size;
    const long long base = (long long)n * 3 * plane + (long long)oy * size + ox;
    for (int c = 0; c < 3; ++c) {
        store(out, base + c * plane, (acc - p.mean[c]) * p.inv_std[c]);
    }
}

// At most 64 registers per thread, so that four 256-thread blocks fit on an SM (ncu showed 84
// registers limiting occupancy to 25% and the kernel latency-bound).
extern "C" __global__ void __launch_bounds__(TILE * TILE, 4) preprocess_tiled_f32(
        const unsigned char* src, const unsigned char* masks, const SliceDesc* descs,
        const int* tab_i, const float* tab_w, PrepParams p, float* out) {
    preprocess_tiled<float>(src, masks, descs, tab_i, tab_w, p, out);
}

extern "C" __global__ void __launch_bounds__(TILE * TILE, 4) preprocess_tiled_f16(
        const unsigned char* src, const unsigned char* masks, const SliceDesc* descs,
        const int* tab_i, const float* tab_w, PrepParams p, unsigned short* out) {
    preprocess_tiled<unsigned short>(src, masks, descs, tab_i, tab_w, p, out);
}

extern "C" __global__ void preprocess_f32(const unsigned char* src, const unsigned char* masks,
                                          const SliceDesc* descs, PrepParams p, float* out) {
    preprocess<float>(src, masks, descs, p, out);
}

extern "C" __global__ void preprocess_f16(const unsigned char* src, const unsigned char* masks,
                                          const SliceDesc* descs, PrepParams p, unsigned short* out) {
    preprocess<unsigned short>(src, masks, descs, p, out);
}
