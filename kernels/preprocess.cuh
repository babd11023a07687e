// Shared definitions of the preprocessing kernels (see src/preprocess/mod.rs for the chain).
// The layout of SliceDesc must match `SliceDesc` in src/preprocess/cuda.rs.
#pragma once

// Stored pixel types.
#define CT_U16 0
#define CT_I16 1
#define CT_F32 2

struct SliceDesc {
    unsigned long long src_offset;  // byte offset of the slice's stored values in `src`
    long long mask_offset;          // byte offset of its lung mask in `masks`, or -1
    int rows;
    int cols;
    int type;                       // CT_U16, CT_I16 or CT_F32
    int pad;
    double slope;                   // modality LUT
    double intercept;
    // Area-weight tables of the tiled kernel (host-computed, as in src/preprocess/cpu.rs):
    // output o along an axis reads `taps` inputs from tab_i[start + o] on, with weights
    // tab_w[weight + o * taps + k] (zero-padded to `taps`).
    int taps_y;
    int taps_x;
    int start_y;
    int start_x;
    int weight_y;
    int weight_x;
};

struct PrepParams {
    int size;                       // output side
    float lo;                       // window center - width / 2
    float inv_width;                // 1 / window width
    float mean[3];
    float inv_std[3];
};

// Stored value -> HU (f64, rounded to f32, as the definition says) -> window -> [0, 1].
__device__ __forceinline__ float windowed(const unsigned char* src, const SliceDesc& d, int i, float lo, float inv_width) {
    double x;
    if (d.type == CT_U16) {
        x = (double)((const unsigned short*)(src + d.src_offset))[i];
    } else if (d.type == CT_I16) {
        x = (double)((const short*)(src + d.src_offset))[i];
    } else {
        x = (double)((const float*)(src + d.src_offset))[i];
    }
    float hu = (float)(x * d.slope + d.intercept);
    return fminf(fmaxf((hu - lo) * inv_width, 0.0f), 1.0f);
}

__device__ __forceinline__ void store(float* out, long long i, float v) { out[i] = v; }

// float -> IEEE half (round to nearest even), without cuda_fp16.h.
__device__ __forceinline__ void store(unsigned short* out, long long i, float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    out[i] = h;
}
