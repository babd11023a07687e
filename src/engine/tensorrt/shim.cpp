// ctsentry's TensorRT shim: a small extern "C" API over the TensorRT C++ runtime (10.x / 11.x).
// libnvinfer is NOT linked: ctrt_load() dlopens it and resolves createInferRuntime_INTERNAL and
// getInferLibVersion, so the binary builds with the headers only and starts on a box without
// TensorRT (the error says so). Every other call goes through the interfaces' virtual tables.
// Errors: functions return 0 / nullptr and write the reason into (err, errlen).
#include <NvInferRuntime.h>
#include <dlfcn.h>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

namespace {

typedef void* (*CreateRuntimeFn)(void*, int32_t);
typedef int32_t (*LibVersionFn)();

CreateRuntimeFn g_create = nullptr;
LibVersionFn g_version = nullptr;
std::mutex g_mutex;

void set_err(char* err, size_t len, const std::string& msg) {
    if (err && len) {
        std::snprintf(err, len, "%s", msg.c_str());
    }
}

// Keeps the last error-level message TensorRT logged, for the caller's error text.
class Logger : public nvinfer1::ILogger {
public:
    std::string last;
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
        if (severity <= Severity::kERROR) {
            last = msg ? msg : "";
        }
    }
};

struct Runtime {
    Logger logger;
    nvinfer1::IRuntime* rt = nullptr;
};

struct Engine {
    Runtime* owner;
    nvinfer1::ICudaEngine* e = nullptr;
};

void copy_dims(const nvinfer1::Dims& d, int32_t* nb, int64_t* dims) {
    *nb = d.nbDims;
    for (int i = 0; i < d.nbDims && i < 8; ++i) dims[i] = d.d[i];
}

}  // namespace

extern "C" {

// The TensorRT version the shim was compiled against (NV_TENSORRT_VERSION style: major*10000 + minor*100 + patch).
int32_t ctrt_header_version() { return NV_TENSORRT_MAJOR * 10000 + NV_TENSORRT_MINOR * 100 + NV_TENSORRT_PATCH; }

// dlopen `path` (or, when null, libnvinfer.so.11 then .so.10). Returns the library version or 0.
int32_t ctrt_load(const char* path, char* err, size_t errlen) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_create && g_version) return g_version();
    const char* candidates[] = {path, "libnvinfer.so.11", "libnvinfer.so.10", "libnvinfer.so"};
    std::string tried;
    for (const char* c : candidates) {
        if (!c) continue;
        void* h = dlopen(c, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            const char* e = dlerror();
            tried += std::string("\n  ") + c + ": " + (e ? e : "not found");
            continue;
        }
        g_create = reinterpret_cast<CreateRuntimeFn>(dlsym(h, "createInferRuntime_INTERNAL"));
        g_version = reinterpret_cast<LibVersionFn>(dlsym(h, "getInferLibVersion"));
        if (!g_create || !g_version) {
            tried += std::string("\n  ") + c + ": loaded, but createInferRuntime_INTERNAL/getInferLibVersion are missing";
            g_create = nullptr;
            g_version = nullptr;
            dlclose(h);
            continue;
        }
        return g_version();
    }
    set_err(err, errlen, "TensorRT runtime library not found; tried:" + tried);
    return 0;
}

void* ctrt_runtime_create(char* err, size_t errlen) {
    if (!g_create) {
        set_err(err, errlen, "ctrt_load() has not succeeded");
        return nullptr;
    }
    Runtime* r = new Runtime();
    r->rt = static_cast<nvinfer1::IRuntime*>(g_create(&r->logger, NV_TENSORRT_VERSION));
    if (!r->rt) {
        set_err(err, errlen, "createInferRuntime failed: " + r->logger.last);
        delete r;
        return nullptr;
    }
    return r;
}

void ctrt_runtime_destroy(void* rt) {
    Runtime* r = static_cast<Runtime*>(rt);
    if (!r) return;
    delete r->rt;
    delete r;
}

void* ctrt_engine_deserialize(void* rt, const void* data, size_t size, char* err, size_t errlen) {
    Runtime* r = static_cast<Runtime*>(rt);
    nvinfer1::ICudaEngine* e = r->rt->deserializeCudaEngine(data, size);
    if (!e) {
        set_err(err, errlen, "the plan cannot be deserialized by this TensorRT (" + r->logger.last +
                                 "); plans are tied to the TensorRT version and GPU they were built with");
        return nullptr;
    }
    return new Engine{r, e};
}

void ctrt_engine_destroy(void* eng) {
    Engine* e = static_cast<Engine*>(eng);
    if (!e) return;
    delete e->e;
    delete e;
}

int32_t ctrt_engine_num_io(void* eng) { return static_cast<Engine*>(eng)->e->getNbIOTensors(); }

int32_t ctrt_engine_num_profiles(void* eng) { return static_cast<Engine*>(eng)->e->getNbOptimizationProfiles(); }

// I/O tensor i: name, input (1) or output (0), data type (nvinfer1::DataType), shape (-1 = dynamic).
int32_t ctrt_engine_io(void* eng, int32_t i, char* name, size_t namelen, int32_t* is_input, int32_t* dtype, int32_t* nb,
                       int64_t* dims) {
    nvinfer1::ICudaEngine* e = static_cast<Engine*>(eng)->e;
    const char* n = e->getIOTensorName(i);
    if (!n) return 0;
    std::snprintf(name, namelen, "%s", n);
    *is_input = e->getTensorIOMode(n) == nvinfer1::TensorIOMode::kINPUT ? 1 : 0;
    *dtype = static_cast<int32_t>(e->getTensorDataType(n));
    copy_dims(e->getTensorShape(n), nb, dims);
    return 1;
}

// Profile 0 shape of input `name`: which = 0 min, 1 opt, 2 max.
int32_t ctrt_engine_profile(void* eng, const char* name, int32_t which, int32_t* nb, int64_t* dims) {
    nvinfer1::ICudaEngine* e = static_cast<Engine*>(eng)->e;
    nvinfer1::OptProfileSelector s = which == 0 ? nvinfer1::OptProfileSelector::kMIN
                                   : which == 1 ? nvinfer1::OptProfileSelector::kOPT
                                                : nvinfer1::OptProfileSelector::kMAX;
    copy_dims(e->getProfileShape(name, 0, s), nb, dims);
    return *nb >= 0 ? 1 : 0;
}

void* ctrt_context_create(void* eng, char* err, size_t errlen) {
    Engine* e = static_cast<Engine*>(eng);
    nvinfer1::IExecutionContext* c = e->e->createExecutionContext();
    if (!c) set_err(err, errlen, "createExecutionContext failed: " + e->owner->logger.last);
    return c;
}

void ctrt_context_destroy(void* ctx) { delete static_cast<nvinfer1::IExecutionContext*>(ctx); }

int32_t ctrt_context_set_input_shape(void* ctx, const char* name, int32_t nb, const int64_t* dims) {
    nvinfer1::Dims d{};
    d.nbDims = nb;
    for (int i = 0; i < nb && i < 8; ++i) d.d[i] = dims[i];
    return static_cast<nvinfer1::IExecutionContext*>(ctx)->setInputShape(name, d) ? 1 : 0;
}

int32_t ctrt_context_set_address(void* ctx, const char* name, void* ptr) {
    return static_cast<nvinfer1::IExecutionContext*>(ctx)->setTensorAddress(name, ptr) ? 1 : 0;
}

int32_t ctrt_context_enqueue(void* ctx, void* stream) {
    return static_cast<nvinfer1::IExecutionContext*>(ctx)->enqueueV3(static_cast<cudaStream_t>(stream)) ? 1 : 0;
}

}  // extern "C"
