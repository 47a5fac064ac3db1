/* The engine's C interface, for firmware and programs in any language: load a .qcnn model from a file or from
 * memory (a model compiled into the firmware image, or received over a network), query it, run uint8 images into
 * float logits. No exception crosses it: every call returns a status, and qcnn_last_error() gives the message of
 * this thread's last failed call, naming the problem (the argument, the file, the node, the offset). A buffer is
 * checked as hostile exactly as a file is (docs/FORMAT.md); the model copies what it keeps, so the caller's buffer
 * may be freed once qcnn_load_buffer returns. A loaded model may run on several threads at once. */
#ifndef QCNN_H
#define QCNN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qcnn_model qcnn_model;

typedef enum {
  QCNN_OK = 0,
  QCNN_ERROR_ARGUMENT = 1, /* a null pointer, a negative count, threads above the limit */
  QCNN_ERROR_FORMAT = 2,   /* the file or buffer is not a valid .qcnn model, or passes a load limit */
  QCNN_ERROR_IO = 3,       /* the file cannot be read */
  QCNN_ERROR_MEMORY = 4,   /* an allocation failed */
  QCNN_ERROR_INTERNAL = 5  /* anything else */
} qcnn_status;

/* Bounds on what one image may cost, checked at load (qcnn_default_options: the engine's defaults: 2^35
 * multiply-accumulates, 2^32 other element operations, 1 GiB of live activations); fuse: 1 runs pointwise nodes
 * inside their producer (bit-exact either way). */
typedef struct {
  int64_t max_macs_per_image;
  int64_t max_ops_per_image;
  int64_t max_activation_bytes_per_image;
  int fuse;
} qcnn_options;

void qcnn_default_options(qcnn_options* options);

/* options may be NULL (the defaults). *model is the loaded model, to be freed with qcnn_free, or NULL on failure. */
qcnn_status qcnn_load_file(const char* path, const qcnn_options* options, qcnn_model** model);
qcnn_status qcnn_load_buffer(const void* data, size_t size, const qcnn_options* options, qcnn_model** model);
void qcnn_free(qcnn_model* model); /* NULL is a no-op */

/* `images` images of qcnn_input_shape() as uint8, NCHW, into images * qcnn_num_classes() floats; threads <= 0 uses
 * the OpenMP default. images = 0 writes nothing. */
qcnn_status qcnn_run(const qcnn_model* model, const uint8_t* pixels, int64_t images, float* logits, int threads);

/* shape[0..2] = channels, height, width. */
qcnn_status qcnn_input_shape(const qcnn_model* model, int64_t shape[3]);
qcnn_status qcnn_num_classes(const qcnn_model* model, int64_t* classes);
/* Bytes of working memory a run of `batch` images on `threads` threads holds at its peak. */
qcnn_status qcnn_peak_activation_bytes(const qcnn_model* model, int64_t batch, int threads, int64_t* bytes);
/* The kernel path chosen at load ("scalar", "avx2", "avx512vnni", "amx"); NULL for a NULL model. */
const char* qcnn_isa(const qcnn_model* model);

/* The message of this thread's last call that did not return QCNN_OK ("" if none). Valid until its next call. */
const char* qcnn_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* QCNN_H */
