/* QEMU TCG plugin: count the guest instructions executed between two marker addresses.
 *
 *   qemu-system-arm ... -plugin icount_plugin.so,arg=begin=0x1234,arg=end=0x5678,arg=out=/path/count.txt
 *
 * Every translated instruction adds 1 to a counter (an inline add, no callback); the first instruction
 * of the begin marker snapshots the counter, the first instruction of the end marker writes the difference
 * to `out` as one line "instructions N" per begin/end pair. TCG translation is deterministic for a
 * fixed ELF and input, so the count repeats to the instruction.
 *
 * Written by hand because Debian's QEMU packages ship the plugin loader but not qemu-plugin.h: the few
 * declarations below are QEMU's plugin API, version 1 (QEMU 4.2 - 8.0), as documented in
 * https://qemu.readthedocs.io/en/v7.2.0/devel/tcg-plugins.html.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn, enum qemu_plugin_op op,
                                                void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

static uint64_t executed;   /* instructions executed so far (single vCPU) */
static uint64_t started;    /* counter at the begin marker */
static bool inside;
static uint64_t begin_addr, end_addr;
static FILE *out;

static void on_begin(unsigned int vcpu, void *udata) {
    (void)vcpu; (void)udata;
    started = executed;
    inside = true;
}

static void on_end(unsigned int vcpu, void *udata) {
    (void)vcpu; (void)udata;
    if (!inside) return;
    inside = false;
    fprintf(out, "instructions %" PRIu64 "\n", executed - started);
    fflush(out);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        if (pc == begin_addr) qemu_plugin_register_vcpu_insn_exec_cb(insn, on_begin, QEMU_PLUGIN_CB_NO_REGS, NULL);
        if (pc == end_addr) qemu_plugin_register_vcpu_insn_exec_cb(insn, on_end, QEMU_PLUGIN_CB_NO_REGS, NULL);
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &executed, 1);
    }
}

static void on_plugin_exit(qemu_plugin_id_t id, void *udata) {
    (void)id; (void)udata;
    fprintf(out, "total %" PRIu64 "\n", executed);
    fclose(out);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc, char **argv) {
    (void)info;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "begin=", 6) == 0) begin_addr = strtoull(argv[i] + 6, NULL, 0) & ~1ULL;
        else if (strncmp(argv[i], "end=", 4) == 0) end_addr = strtoull(argv[i] + 4, NULL, 0) & ~1ULL;
        else if (strncmp(argv[i], "out=", 4) == 0) path = argv[i] + 4;
    }
    if (!begin_addr || !end_addr || !path) {
        fprintf(stderr, "icount_plugin: needs arg=begin=ADDR,arg=end=ADDR,arg=out=FILE\n");
        return -1;
    }
    out = fopen(path, "w");
    if (!out) { perror(path); return -1; }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}
