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

extern "C" __global__ void preprocess_f32(const unsigned char* src, const unsigned char* masks,
                                          const SliceDesc* descs, PrepParams p, float* out) {
    preprocess<float>(src, masks, descs, p, out);
}

extern "C" __global__ void preprocess_f16(const unsigned char* src, const unsigned char* masks,
                                          const SliceDesc* descs, PrepParams p, unsigned short* out) {
    preprocess<unsigned short>(src, masks, descs, p, out);
}
