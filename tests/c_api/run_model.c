/* The embedding example: the C interface (csrc/runtime/qcnn.h) from C99. It loads a .qcnn model from memory (as a
 * model compiled into a firmware image or received over a network would be), runs the raw uint8 images of a file
 * (N x C x H x W bytes) and writes their logits as raw float32. CMake builds it as build/cmake/qcnn-embed-example and,
 * cross-compiled, build/aarch64/qcnn-embed-example (tests/python/test_engine.py and test_arm.py run both).
 *   qcnn-embed-example MODEL.qcnn IMAGES.raw LOGITS.raw THREADS */
#include <stdio.h>
#include <stdlib.h>

#include "runtime/qcnn.h"

static unsigned char* read_all(const char* path, long* size) {
  FILE* f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  *size = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char* data = malloc(*size > 0 ? (size_t)*size : 1);
  if (data && fread(data, 1, (size_t)*size, f) != (size_t)*size) {
    free(data);
    data = NULL;
  }
  fclose(f);
  return data;
}

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: qcnn-embed-example MODEL.qcnn IMAGES.raw LOGITS.raw THREADS\n");
    return 2;
  }
  long model_size = 0, images_size = 0;
  unsigned char* model_bytes = read_all(argv[1], &model_size);
  unsigned char* pixels = read_all(argv[2], &images_size);
  if (!model_bytes || !pixels) {
    fprintf(stderr, "cannot read the model or the images\n");
    return 1;
  }
  qcnn_model* model = NULL;
  if (qcnn_load_buffer(model_bytes, (size_t)model_size, NULL, &model) != QCNN_OK) {
    fprintf(stderr, "%s\n", qcnn_last_error());
    return 1;
  }
  free(model_bytes); /* the model keeps its own copy */
  int64_t shape[3], classes;
  qcnn_input_shape(model, shape);
  qcnn_num_classes(model, &classes);
  const int64_t image_bytes = shape[0] * shape[1] * shape[2], n = images_size / image_bytes;
  float* logits = malloc((size_t)(n * classes + 1) * sizeof(float));
  if (qcnn_run(model, pixels, n, logits, atoi(argv[4])) != QCNN_OK) {
    fprintf(stderr, "%s\n", qcnn_last_error());
    return 1;
  }
  FILE* out = fopen(argv[3], "wb");
  if (!out || fwrite(logits, sizeof(float), (size_t)(n * classes), out) != (size_t)(n * classes)) return 1;
  fclose(out);
  printf("%lld images, %lld classes, isa %s\n", (long long)n, (long long)classes, qcnn_isa(model));
  qcnn_free(model);
  free(logits);
  free(pixels);
  return 0;
}
