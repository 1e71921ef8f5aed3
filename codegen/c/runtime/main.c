/* main.c: a small driver for a model built by slimgraph's `c` target.
 *
 *   ./slimgraph_driver weights.bin IN_0.bin ... IN_{n-1}.bin OUT_0.bin ... OUT_{m-1}.bin
 *
 * Each input file holds the raw bytes of one input tensor (dense row-major, little-endian as this
 * host stores them; bool = one byte 0/1), in the order and of the sizes `./slimgraph_driver` (no
 * arguments) prints. Each output is written the same way. Exit status 0 on success, 2 on bad
 * arguments or files, 3 when the model reports an error (an id out of range).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

static void usage(const char *prog) {
    int i, d;
    long k = 0;
    fprintf(stderr, "usage: %s weights.bin", prog);
    for (i = 0; i < SLIMGRAPH_NUM_INPUTS; i++) fprintf(stderr, " %s.bin", slimgraph_input_names[i]);
    for (i = 0; i < SLIMGRAPH_NUM_OUTPUTS; i++) fprintf(stderr, " OUT_%s.bin", slimgraph_output_names[i]);
    fprintf(stderr, "\nraw little-endian row-major tensors (bool: one byte 0/1):\n");
    for (i = 0; i < SLIMGRAPH_NUM_INPUTS; i++) {
        fprintf(stderr, "  input  %d %-24s %-4s [", i, slimgraph_input_names[i], slimgraph_input_dtypes[i]);
        for (d = 0; d < slimgraph_input_ranks[i]; d++) fprintf(stderr, d ? ",%ld" : "%ld", slimgraph_input_dims[k++]);
        if (!slimgraph_input_ranks[i]) k++;
        fprintf(stderr, "]  %ld bytes\n", slimgraph_input_bytes[i]);
    }
    k = 0;
    for (i = 0; i < SLIMGRAPH_NUM_OUTPUTS; i++) {
        fprintf(stderr, "  output %d %-24s %-4s [", i, slimgraph_output_names[i], slimgraph_output_dtypes[i]);
        for (d = 0; d < slimgraph_output_ranks[i]; d++) fprintf(stderr, d ? ",%ld" : "%ld", slimgraph_output_dims[k++]);
        if (!slimgraph_output_ranks[i]) k++;
        fprintf(stderr, "]  %ld bytes\n", slimgraph_output_bytes[i]);
    }
}

/* malloc'd buffer of exactly `want` bytes from `path` (want < 0: any size; *got receives it) */
static unsigned char *read_file(const char *path, long want, long *got, const char *what) {
    FILE *f = fopen(path, "rb");
    long n;
    unsigned char *buf;
    if (!f) {
        fprintf(stderr, "cannot open %s file %s\n", what, path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (want >= 0 && n != want) {
        fprintf(stderr, "%s file %s has %ld bytes, expected %ld\n", what, path, n, want);
        fclose(f);
        return NULL;
    }
    buf = (unsigned char *)malloc(n > 0 ? (size_t)n : 1);
    if (!buf || (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)) {
        fprintf(stderr, "cannot read %s file %s\n", what, path);
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    if (got) *got = n;
    return buf;
}

int main(int argc, char **argv) {
    const void *inputs[SLIMGRAPH_NUM_INPUTS + 1];
    void *outputs[SLIMGRAPH_NUM_OUTPUTS + 1];
    unsigned char *weights, *arena;
    long nweights = 0;
    int i, rc;
    if (argc != 2 + SLIMGRAPH_NUM_INPUTS + SLIMGRAPH_NUM_OUTPUTS) {
        usage(argv[0]);
        return 2;
    }
    weights = read_file(argv[1], -1, &nweights, "weights");
    if (!weights) return 2;
    if (nweights != SLIMGRAPH_WEIGHTS_BYTES) {
        fprintf(stderr, "weights file %s has %ld bytes, expected %ld (from another build?)\n", argv[1], nweights,
                (long)SLIMGRAPH_WEIGHTS_BYTES);
        return 2;
    }
    for (i = 0; i < SLIMGRAPH_NUM_INPUTS; i++) {
        inputs[i] = read_file(argv[2 + i], slimgraph_input_bytes[i], NULL, slimgraph_input_names[i]);
        if (!inputs[i]) return 2;
    }
    for (i = 0; i < SLIMGRAPH_NUM_OUTPUTS; i++) {
        outputs[i] = malloc(slimgraph_output_bytes[i] > 0 ? (size_t)slimgraph_output_bytes[i] : 1);
        if (!outputs[i]) return 2;
    }
    arena = (unsigned char *)malloc(SLIMGRAPH_ARENA_BYTES > 0 ? (size_t)SLIMGRAPH_ARENA_BYTES : 1);
    if (!arena) {
        fprintf(stderr, "cannot allocate the %ld-byte arena\n", (long)SLIMGRAPH_ARENA_BYTES);
        return 2;
    }
    rc = slimgraph_forward(inputs, outputs, weights, arena);
    if (rc) {
        fprintf(stderr, "slimgraph_forward failed with error %d (1: an index input is out of range)\n", rc);
        return 3;
    }
    for (i = 0; i < SLIMGRAPH_NUM_OUTPUTS; i++) {
        const char *path = argv[2 + SLIMGRAPH_NUM_INPUTS + i];
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(outputs[i], 1, (size_t)slimgraph_output_bytes[i], f) != (size_t)slimgraph_output_bytes[i]) {
            fprintf(stderr, "cannot write output file %s\n", path);
            return 2;
        }
        fclose(f);
    }
    return 0;
}
