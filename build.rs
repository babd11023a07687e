//! Build script. The default build compiles no native code of its own. With the `tensorrt`
//! feature it compiles the TensorRT shim (src/engine/tensorrt/shim.cpp) against the TensorRT
//! headers (`TENSORRT_INCLUDE_DIR`, the folder with NvInferRuntime.h) and the CUDA runtime headers
//! (`CUDA_INCLUDE_DIR`, the folder with cuda_runtime_api.h). libnvinfer itself is not linked:
//! it is loaded at run time.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_TENSORRT").is_some() {
        tensorrt();
    }
}

#[cfg(feature = "tensorrt")]
fn tensorrt() {
    println!("cargo:rerun-if-changed=src/engine/tensorrt/shim.cpp");
    println!("cargo:rerun-if-env-changed=TENSORRT_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=CUDA_INCLUDE_DIR");
    let dir = |var: &str, file: &str, hint: &str| -> String {
        let d = std::env::var(var).unwrap_or_else(|_| panic!("the tensorrt feature needs {var}: the folder holding {file} ({hint})"));
        assert!(std::path::Path::new(&d).join(file).is_file(), "{var}={d}: no {file} there ({hint})");
        d
    };
    let trt = dir("TENSORRT_INCLUDE_DIR", "NvInferRuntime.h", "e.g. /usr/include/x86_64-linux-gnu, or the crate trtx-sys's TensorRT-Headers/TRT-Enterprise-11.4");
    let cuda = dir("CUDA_INCLUDE_DIR", "cuda_runtime_api.h", "e.g. /usr/local/cuda/include, or nvidia/cu13/include of the pip wheels nvidia-cuda-runtime + nvidia-cuda-crt");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("src/engine/tensorrt/shim.cpp")
        .include(trt)
        .include(cuda)
        .flag_if_supported("-Wno-deprecated-declarations")
        .compile("ctsentry_trt_shim");
    println!("cargo:rustc-link-lib=dl");
}

#[cfg(not(feature = "tensorrt"))]
fn tensorrt() {
    unreachable!("the tensorrt feature enables cc");
}
