/* Minimal start-up for the firmware on QEMU's MPS2 boards (mps2-an386: Cortex-M4, mps2-an500: Cortex-M7):
 * the vector table, a reset handler that copies .data from flash, zeroes .bss, paints the stack so its
 * high-water mark can be read back, opens semihosting (newlib's rdimon) and calls main(); a fault ends
 * the emulator with a non-zero status instead of spinning. Written by hand: QEMU system mode runs no
 * vendor start-up code, and the board's CMSIS device files are not part of the TFLM sources.
 */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack, __stack_limit;
extern int main(void);
extern void __libc_init_array(void);
extern void initialise_monitor_handles(void);

#define STACK_PAINT 0x5AC45AC4u

void Reset_Handler(void);
void Fault_Handler(void);

/* Semihosting SYS_EXIT with ADP_Stopped_RunTimeErrorUnknown: QEMU exits with status 1. */
static void semihost_fail(const char *message) {
    register uint32_t r0 __asm__("r0") = 0x04; /* SYS_WRITE0 */
    register const char *r1 __asm__("r1") = message;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    register uint32_t e0 __asm__("r0") = 0x18; /* SYS_EXIT */
    register uint32_t e1 __asm__("r1") = 0x20023;
    __asm__ volatile("bkpt 0xab" : "+r"(e0) : "r"(e1) : "memory");
    for (;;) {
    }
}

void Fault_Handler(void) { semihost_fail("FAULT: the firmware took an exception\n"); }

__attribute__((section(".isr_vector"), used)) const void *const vector_table[16] = {
    &_estack, Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    0, 0, 0, 0, Fault_Handler, Fault_Handler, 0, Fault_Handler, Fault_Handler,
};

/* Bytes of stack used so far (the deepest word that lost its paint); main.cc prints it when linked. */
unsigned long tinyml_stack_used_bytes(void) {
    const uint32_t *p = &__stack_limit;
    while (p < &_estack && *p == STACK_PAINT) p++;
    return (unsigned long)((const char *)&_estack - (const char *)p);
}

/* What -nostartfiles drops with crti/crtn/crtbegin: the constructor hooks (empty) and the handle that
 * registers static destructors (one image, no shared objects). */
void _init(void) {}
void _fini(void) {}
void *__dso_handle = 0;

void Reset_Handler(void) {
    for (uint32_t *src = &_sidata, *dst = &_sdata; dst < &_edata;) *dst++ = *src++;
    for (uint32_t *dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *p = &__stack_limit; p < sp - 16; p++) *p = STACK_PAINT;
    initialise_monitor_handles();
    __libc_init_array();
    exit(main());
}
