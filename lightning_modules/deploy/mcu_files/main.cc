// One inference of the embedded test image with TensorFlow Lite Micro: prints the predicted class, the
// int8 outputs, whether they equal the host interpreter's, and the tensor arena TFLM used.
// Board-independent: output goes through MicroPrintf (TFLM's DebugLog of the target).
#include <cstdint>
#include <cstring>

#include "model_data.h"
#include "op_resolver.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/micro/system_setup.h"
#include "tensorflow/lite/schema/schema_generated.h"
#include "test_image.h"

namespace {
alignas(16) uint8_t tensor_arena[kTensorArenaSize];
volatile int inference_marker;
}  // namespace

extern "C" {
// The inference is bracketed by these two calls: an instruction counter (the QEMU plugin) or a cycle
// counter on a board (DWT->CYCCNT) measures between them. Distinct bodies, so no pass folds them together.
__attribute__((noinline)) void tinyml_inference_begin(void) { inference_marker = 1; }
__attribute__((noinline)) void tinyml_inference_end(void) { inference_marker = 2; }
// Defined by the emulator's start-up code (stack high-water mark); absent in a board project.
__attribute__((weak)) unsigned long tinyml_stack_used_bytes(void);
}

#ifdef TINYML_OP_MARKERS
// Built with -DTINYML_OP_MARKERS (to measure each operator apart): TFLM calls the interpreter's profiler
// around every operator's kernel (micro_interpreter_graph.cc, ScopedMicroProfiler), and this profiler
// calls two more marker functions there. Off by default: the profiler calls add instructions per op.
#include "tensorflow/lite/micro/micro_profiler_interface.h"
extern "C" {
__attribute__((noinline)) void tinyml_op_begin(void) { inference_marker = 3; }
__attribute__((noinline)) void tinyml_op_end(void) { inference_marker = 4; }
}
namespace {
class OpMarkers : public tflite::MicroProfilerInterface {
 public:
  uint32_t BeginEvent(const char*) override {
    tinyml_op_begin();
    return 0;
  }
  void EndEvent(uint32_t) override { tinyml_op_end(); }
};
OpMarkers op_markers;
}  // namespace
#define TINYML_PROFILER (&op_markers)
#else
#define TINYML_PROFILER nullptr
#endif

int main(void) {
  tflite::InitializeTarget();
  const tflite::Model* model = tflite::GetModel(g_model_data);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    MicroPrintf("error: model schema version %d, TFLM expects %d", static_cast<int>(model->version()),
                TFLITE_SCHEMA_VERSION);
    return 1;
  }
  static OpResolver resolver;
  if (RegisterOps(resolver) != kTfLiteOk) {
    MicroPrintf("error: registering the model's ops failed");
    return 1;
  }
  static tflite::MicroInterpreter interpreter(model, resolver, tensor_arena, kTensorArenaSize, nullptr,
                                              TINYML_PROFILER);
  if (interpreter.AllocateTensors() != kTfLiteOk) {
    MicroPrintf("error: AllocateTensors failed with an arena of %d bytes", kTensorArenaSize);
    return 1;
  }
  TfLiteTensor* input = interpreter.input(0);
  if (input->type != kTfLiteInt8 || input->bytes != sizeof(g_test_image)) {
    MicroPrintf("error: input tensor is not int8[%d]", static_cast<int>(sizeof(g_test_image)));
    return 1;
  }
  std::memcpy(input->data.int8, g_test_image, sizeof(g_test_image));

  tinyml_inference_begin();
  TfLiteStatus status = interpreter.Invoke();
  tinyml_inference_end();
  if (status != kTfLiteOk) {
    MicroPrintf("error: Invoke failed");
    return 1;
  }

  const TfLiteTensor* output = interpreter.output(0);
  const int count = static_cast<int>(output->bytes);
  int best = 0;
  bool same = count == kOutputCount;
  for (int i = 0; i < count; ++i) {
    const int value = output->data.int8[i];
    if (value > output->data.int8[best]) best = i;
    if (same && value != g_expected_output[i]) same = false;
  }
  MicroPrintf("class %d", best);
  for (int i = 0; i < count; ++i) MicroPrintf("output %d %d", i, static_cast<int>(output->data.int8[i]));
  MicroPrintf("arena_used_bytes %d", static_cast<int>(interpreter.arena_used_bytes()));
  MicroPrintf("arena_size_bytes %d", kTensorArenaSize);
  if (tinyml_stack_used_bytes != nullptr) {
    MicroPrintf("stack_used_bytes %d", static_cast<int>(tinyml_stack_used_bytes()));
  }
  MicroPrintf("host_output %s", same ? "equal" : "DIFFERENT");
  MicroPrintf("done");
  return same ? 0 : 2;
}
