/*
 * kvmcaps: asks /dev/kvm what it supports and prints one line of JSON for harness/fingerprint.ts.
 *
 *   {"api_version": N, "caps": {"KVM_CAP_...": N, ...},
 *    "supported_cpuid": {"x2apic": b, "tsc_deadline": b, "vmx": b, "svm": b, "hypervisor": b},
 *    "vcpu_tsc_khz": N, "error": null}
 *
 * vcpu_tsc_khz is KVM_GET_TSC_KHZ on a fresh vCPU of a throw-away VM: the rate the guest TSC runs
 * at, as KVM itself keeps it (timer models convert device time into guest TSC with it); 0 when a VM
 * or vCPU could not be created.
 *
 * If /dev/kvm cannot be opened it prints {"error": "open /dev/kvm: ...", "errno": N} and exits 2,
 * so the caller can tell "missing" (ENOENT/ENXIO/ENODEV) from "no access" (EACCES/EPERM).
 * A cap whose constant this machine's linux/kvm.h lacks is reported as -1 ("could not ask"),
 * which is also what a failed KVM_CHECK_EXTENSION returns. If KVM_GET_SUPPORTED_CPUID fails,
 * supported_cpuid is null and "cpuid_error" says why; the caps are still worth reporting.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/kvm.h>

/* Older headers lack newer caps: give them a placeholder so the table below stays one list. */
#define CAP_MISSING (-1)
#ifndef KVM_CAP_SPLIT_IRQCHIP
#define KVM_CAP_SPLIT_IRQCHIP CAP_MISSING
#endif
#ifndef KVM_CAP_X2APIC_API
#define KVM_CAP_X2APIC_API CAP_MISSING
#endif
#ifndef KVM_CAP_TSC_CONTROL
#define KVM_CAP_TSC_CONTROL CAP_MISSING
#endif
#ifndef KVM_CAP_GET_TSC_KHZ
#define KVM_CAP_GET_TSC_KHZ CAP_MISSING
#endif
#ifndef KVM_CAP_VM_TSC_CONTROL
#define KVM_CAP_VM_TSC_CONTROL CAP_MISSING
#endif
#ifndef KVM_CAP_TSC_DEADLINE_TIMER
#define KVM_CAP_TSC_DEADLINE_TIMER CAP_MISSING
#endif
#ifndef KVM_CAP_DIRTY_LOG_RING
#define KVM_CAP_DIRTY_LOG_RING CAP_MISSING
#endif
#ifndef KVM_CAP_DIRTY_LOG_RING_ACQ_REL
#define KVM_CAP_DIRTY_LOG_RING_ACQ_REL CAP_MISSING
#endif
#ifndef KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
#define KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 CAP_MISSING
#endif
#ifndef KVM_CAP_NESTED_STATE
#define KVM_CAP_NESTED_STATE CAP_MISSING
#endif
#ifndef KVM_CAP_EXCEPTION_PAYLOAD
#define KVM_CAP_EXCEPTION_PAYLOAD CAP_MISSING
#endif
#ifndef KVM_CAP_IMMEDIATE_EXIT
#define KVM_CAP_IMMEDIATE_EXIT CAP_MISSING
#endif
#ifndef KVM_CAP_X86_APIC_BUS_CYCLES_NS
#define KVM_CAP_X86_APIC_BUS_CYCLES_NS CAP_MISSING
#endif

/* #n stringifies the name as written, not its value, so the JSON keys are the header's names. */
#define CAP(n) { #n, n }
static const struct { const char *name; int id; } caps[] = {
	CAP(KVM_CAP_NR_VCPUS),
	CAP(KVM_CAP_MAX_VCPUS),
	CAP(KVM_CAP_IRQCHIP),
	CAP(KVM_CAP_SPLIT_IRQCHIP),
	CAP(KVM_CAP_X2APIC_API),
	CAP(KVM_CAP_TSC_CONTROL),
	CAP(KVM_CAP_GET_TSC_KHZ),
	CAP(KVM_CAP_VM_TSC_CONTROL),
	CAP(KVM_CAP_TSC_DEADLINE_TIMER),
	CAP(KVM_CAP_DIRTY_LOG_RING),
	CAP(KVM_CAP_DIRTY_LOG_RING_ACQ_REL),
	CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2),
	CAP(KVM_CAP_NESTED_STATE),
	CAP(KVM_CAP_EXCEPTION_PAYLOAD),
	CAP(KVM_CAP_IMMEDIATE_EXIT),
	CAP(KVM_CAP_X86_APIC_BUS_CYCLES_NS),
};

/* Error strings come from strerror(); escape them anyway so the output is always valid JSON. */
static void json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static const struct kvm_cpuid_entry2 *find_leaf(const struct kvm_cpuid2 *cpuid, __u32 function)
{
	for (__u32 i = 0; i < cpuid->nent; i++)
		if (cpuid->entries[i].function == function && cpuid->entries[i].index == 0)
			return &cpuid->entries[i];
	return NULL;
}

/* The kernel says E2BIG until the buffer holds every entry it wants to report, so grow and retry. */
static struct kvm_cpuid2 *get_supported_cpuid(int kvm)
{
	for (__u32 nent = 64; nent <= 4096; nent *= 2) {
		struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + nent * sizeof(cpuid->entries[0]));
		if (!cpuid)
			return NULL;
		cpuid->nent = nent;
		if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) == 0)
			return cpuid;
		int err = errno;
		free(cpuid);
		if (err != E2BIG) {
			errno = err;
			return NULL;
		}
	}
	errno = E2BIG;
	return NULL;
}

static const char *boolstr(__u32 reg, int bit)
{
	return (reg >> bit) & 1 ? "true" : "false";
}

int main(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0) {
		int err = errno;
		char msg[256];
		snprintf(msg, sizeof(msg), "open /dev/kvm: %s", strerror(err));
		printf("{\"error\": ");
		json_string(msg);
		printf(", \"errno\": %d}\n", err);
		return 2;
	}

	printf("{\"api_version\": %d, \"caps\": {", ioctl(kvm, KVM_GET_API_VERSION, 0));
	for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
		int r = caps[i].id == CAP_MISSING ? -1 : ioctl(kvm, KVM_CHECK_EXTENSION, caps[i].id);
		printf("%s\"%s\": %d", i ? ", " : "", caps[i].name, r < 0 ? -1 : r);
	}
	printf("}, ");

	struct kvm_cpuid2 *cpuid = get_supported_cpuid(kvm);
	if (cpuid) {
		const struct kvm_cpuid_entry2 *l1 = find_leaf(cpuid, 1);
		const struct kvm_cpuid_entry2 *ext = find_leaf(cpuid, 0x80000001);
		__u32 ecx1 = l1 ? l1->ecx : 0, ecx_ext = ext ? ext->ecx : 0;
		printf("\"supported_cpuid\": {\"x2apic\": %s, \"tsc_deadline\": %s, \"vmx\": %s, "
		       "\"svm\": %s, \"hypervisor\": %s}, ",
		       boolstr(ecx1, 21), boolstr(ecx1, 24), boolstr(ecx1, 5), boolstr(ecx_ext, 2),
		       boolstr(ecx1, 31));
		free(cpuid);
	} else {
		char msg[256];
		snprintf(msg, sizeof(msg), "KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
		printf("\"supported_cpuid\": null, \"cpuid_error\": ");
		json_string(msg);
		printf(", ");
	}
	int tsc_khz = 0;
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm >= 0) {
		int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
		if (vcpu >= 0) {
			int r = ioctl(vcpu, KVM_GET_TSC_KHZ, 0);
			tsc_khz = r > 0 ? r : 0;
			close(vcpu);
		}
		close(vm);
	}
	printf("\"vcpu_tsc_khz\": %d, ", tsc_khz);
	printf("\"error\": null}\n");
	close(kvm);
	return 0;
}
