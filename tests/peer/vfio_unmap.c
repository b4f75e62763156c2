/*
 * The Linux side of `make bench-peer` (docs/performance.md): what Debian's own arm64 Linux
 * does to keep the SMMU coherent when a device's mapping goes away, measured the way
 * Shootdown's `peer.unmap` benchmark (kernel/src/bench/smmu.rs) measures itself, on the same QEMU line.
 *
 * For each size N (4 KiB pages): map N pages of this process's memory for QEMU's `edu` with
 * VFIO_IOMMU_MAP_DMA (type1 IOMMU, the SMMUv3 behind the PCIe bus), have edu read up to 16 of
 * them (so QEMU's IOTLB holds them), then VFIO_IOMMU_UNMAP_DMA while the PMU counts retired
 * instructions (perf_event_open, user and kernel), then have edu read the first page again:
 * it must fault (QEMU delivers zeros for a faulting read, and records an F_TRANSLATION event).
 *
 * Output is KTAP with the result lines of kernel/src/bench/mod.rs, and the console markers of
 * tests/harness/src/bench/qemu_trace.rs around what QEMU must count:
 *
 *     # bench-window begin name=peer.unmap kernel=linux pages=16
 *     # bench-window end name=peer.unmap kernel=linux pages=16
 *     # bench name=peer.unmap kernel=linux pages=16 metric=insns value=12345 unit=insns
 *
 * A marker is on the UART before the measured call starts: tcdrain() waits until the tty has
 * sent it. Built static (aarch64-linux-gnu-gcc -static) into the initramfs by tests/peer/mkinitramfs.sh.
 *
 * usage: vfio_unmap BDF PAGES[,PAGES...]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <linux/perf_event.h>
#include <linux/vfio.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

/* QEMU's edu (docs/specs/edu.rst): DMA registers in BAR0, a 4 KiB buffer at 0x40000. */
#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_COUNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_CMD_START 1u
#define EDU_CMD_TO_RAM 2u
#define EDU_BUFFER 0x40000u
/* QEMU runs an edu transfer 100 ms (virtual clock) after the command. */
#define EDU_DMA_DELAY_US 100000
#define EDU_TIMEOUT_POLLS 5000

#define PAGE 4096ul
/* The same IOVA Shootdown maps the region at (kernel/src/bench/mm.rs VA); the virt-smmu
 * profile gives edu a 64-bit DMA mask. The staging page, for reading edu's buffer back,
 * sits 1 GiB below like Shootdown's unrelated pages. */
#define IOVA_DATA 0x4000000000ull
#define IOVA_STAGING 0x3fc0000000ull
/* Pages edu reads before the unmap, spread over the region: what Shootdown's peer.unmap reads
 * (each read is 100 ms of virtual time, which Shootdown spends polling). */
#define TOUCHED 16ul
#define STAGING_FILL 0x77777777u

static int failures;

static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("    # FAIL: ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	fflush(stdout);
	failures++;
}

static void die(const char *what)
{
	printf("    # FAIL: %s: %s\nnot ok 1 peer # %s failed\n", what, strerror(errno), what);
	fflush(stdout);
	exit(1);
}

/* Prints a console marker and returns only once the UART has sent it. */
static void marker(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fflush(stdout);
	if (tcdrain(STDOUT_FILENO))
		die("tcdrain (stdout must be the console tty: the markers order the trace)");
}

static uint32_t pattern(uint64_t page)
{
	return 0x5d000000u | (uint32_t)page;
}

struct edu {
	volatile uint8_t *bar;
};

static void edu_w64(struct edu *e, unsigned off, uint64_t v)
{
	*(volatile uint64_t *)(e->bar + off) = v;
}

static uint64_t edu_r64(struct edu *e, unsigned off)
{
	return *(volatile uint64_t *)(e->bar + off);
}

/* One transfer: `to_ram` copies edu's buffer to `iova`, otherwise `iova` to the buffer. */
static int edu_dma(struct edu *e, uint64_t iova, int to_ram)
{
	edu_w64(e, to_ram ? EDU_DMA_SRC : EDU_DMA_DST, EDU_BUFFER);
	edu_w64(e, to_ram ? EDU_DMA_DST : EDU_DMA_SRC, iova);
	edu_w64(e, EDU_DMA_COUNT, 4);
	edu_w64(e, EDU_DMA_CMD, EDU_CMD_START | (to_ram ? EDU_CMD_TO_RAM : 0));
	usleep(EDU_DMA_DELAY_US);
	for (int i = 0; i < EDU_TIMEOUT_POLLS; i++) {
		if (!(edu_r64(e, EDU_DMA_CMD) & EDU_CMD_START))
			return 0;
		usleep(1000);
	}
	fail("edu DMA at 0x%" PRIx64 " did not complete", iova);
	return -1;
}

/* What edu reads at `iova`, seen through the staging page. */
static uint32_t edu_read_word(struct edu *e, volatile uint32_t *staging, uint64_t iova)
{
	*staging = STAGING_FILL;
	if (edu_dma(e, iova, 0) || edu_dma(e, IOVA_STAGING, 1))
		return STAGING_FILL;
	return *staging;
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0 || write(fd, text, strlen(text)) < 0)
		die(path);
	close(fd);
}

struct vfio {
	int container;
	int device;
	struct edu edu;
};

/* Binds `bdf` to vfio-pci, puts its group in a type1 container, maps BAR0, enables DMA. */
static void vfio_open(struct vfio *v, const char *bdf)
{
	char path[256], link[256];
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/driver_override", bdf);
	write_file(path, "vfio-pci");
	write_file("/sys/bus/pci/drivers_probe", bdf);
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group", bdf);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		die("iommu_group (no IOMMU in front of the device?)");
	link[n] = 0;
	snprintf(path, sizeof(path), "/dev/vfio/%s", basename(link));

	v->container = open("/dev/vfio/vfio", O_RDWR);
	if (v->container < 0)
		die("/dev/vfio/vfio");
	if (ioctl(v->container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) != 1)
		die("VFIO_TYPE1v2_IOMMU");
	int group = open(path, O_RDWR);
	if (group < 0)
		die(path);
	struct vfio_group_status status = { .argsz = sizeof(status) };
	if (ioctl(group, VFIO_GROUP_GET_STATUS, &status) || !(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		die("VFIO group not viable");
	if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &v->container))
		die("VFIO_GROUP_SET_CONTAINER");
	if (ioctl(v->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU))
		die("VFIO_SET_IOMMU");
	v->device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
	if (v->device < 0)
		die("VFIO_GROUP_GET_DEVICE_FD");

	struct vfio_region_info bar = { .argsz = sizeof(bar), .index = VFIO_PCI_BAR0_REGION_INDEX };
	if (ioctl(v->device, VFIO_DEVICE_GET_REGION_INFO, &bar) || !(bar.flags & VFIO_REGION_INFO_FLAG_MMAP))
		die("BAR0 region");
	v->edu.bar = mmap(NULL, bar.size, PROT_READ | PROT_WRITE, MAP_SHARED, v->device, bar.offset);
	if (v->edu.bar == MAP_FAILED)
		die("mmap BAR0");
	struct vfio_region_info cfg = { .argsz = sizeof(cfg), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	if (ioctl(v->device, VFIO_DEVICE_GET_REGION_INFO, &cfg))
		die("config region");
	uint16_t cmd;
	if (pread(v->device, &cmd, 2, cfg.offset + 4) != 2)
		die("read PCI_COMMAND");
	cmd |= 0x6; /* memory space, bus master */
	if (pwrite(v->device, &cmd, 2, cfg.offset + 4) != 2)
		die("write PCI_COMMAND");
}

static int vfio_map(struct vfio *v, void *mem, uint64_t iova, uint64_t size)
{
	struct vfio_iommu_type1_dma_map map = {
		.argsz = sizeof(map),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)mem,
		.iova = iova,
		.size = size,
	};
	return ioctl(v->container, VFIO_IOMMU_MAP_DMA, &map);
}

/* Instructions retired by this task, user and kernel (-1 if the PMU is unusable). */
static int perf_open(void)
{
	struct perf_event_attr a = {
		.type = PERF_TYPE_HARDWARE,
		.size = sizeof(a),
		.config = PERF_COUNT_HW_INSTRUCTIONS,
		.disabled = 1,
		.exclude_hv = 1,
	};
	return syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
}

/* Counts what `unmap` executes between ENABLE and DISABLE; 0 with no PMU. */
static uint64_t counted_unmap(int perf, int container, struct vfio_iommu_type1_dma_unmap *unmap, int *rc)
{
	uint64_t count = 0;
	if (perf >= 0) {
		ioctl(perf, PERF_EVENT_IOC_RESET, 0);
		ioctl(perf, PERF_EVENT_IOC_ENABLE, 0);
	}
	*rc = unmap ? ioctl(container, VFIO_IOMMU_UNMAP_DMA, unmap) : 0;
	if (perf >= 0) {
		ioctl(perf, PERF_EVENT_IOC_DISABLE, 0);
		if (read(perf, &count, sizeof(count)) != sizeof(count))
			count = 0;
	}
	return count;
}

static void result(uint64_t pages, const char *metric, uint64_t value, const char *unit)
{
	printf("    # bench name=peer.unmap kernel=linux smmu=mmio pages=%" PRIu64
	       " metric=%s value=%" PRIu64 " unit=%s\n", pages, metric, value, unit);
}

static void one_size(struct vfio *v, int perf, uint64_t overhead, volatile uint32_t *staging,
		     uint64_t pages)
{
	uint64_t size = pages * PAGE;
	uint8_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		fail("%" PRIu64 " pages: mmap: %s", pages, strerror(errno));
		return;
	}
	/* 4 KiB pages, as Shootdown's benchmark maps them: no transparent huge pages. */
	madvise(mem, size, MADV_NOHUGEPAGE);
	for (uint64_t p = 0; p < pages; p++)
		*(uint32_t *)(mem + p * PAGE) = pattern(p);
	if (vfio_map(v, mem, IOVA_DATA, size)) {
		fail("%" PRIu64 " pages: VFIO_IOMMU_MAP_DMA: %s", pages, strerror(errno));
		munmap(mem, size);
		return;
	}
	uint64_t touched = pages < TOUCHED ? pages : TOUCHED;
	for (uint64_t k = 0; k < touched; k++) {
		uint64_t p = k * pages / touched;
		uint32_t got = edu_read_word(&v->edu, staging, IOVA_DATA + p * PAGE);
		if (got != pattern(p))
			fail("%" PRIu64 " pages: edu read 0x%08x at page %" PRIu64 " before the unmap, not 0x%08x",
			     pages, got, p, pattern(p));
	}

	struct vfio_iommu_type1_dma_unmap unmap = { .argsz = sizeof(unmap), .iova = IOVA_DATA, .size = size };
	int rc;
	marker("    # bench-window begin name=peer.unmap kernel=linux smmu=mmio pages=%" PRIu64 "\n", pages);
	uint64_t raw = counted_unmap(perf, v->container, &unmap, &rc);
	marker("    # bench-window end name=peer.unmap kernel=linux smmu=mmio pages=%" PRIu64 "\n", pages);
	if (rc || unmap.size != size)
		fail("%" PRIu64 " pages: VFIO_IOMMU_UNMAP_DMA: rc %d, %llu bytes unmapped", pages, rc,
		     (unsigned long long)unmap.size);

	marker("    # bench-window begin name=peer.after kernel=linux smmu=mmio pages=%" PRIu64 "\n", pages);
	uint32_t after = edu_read_word(&v->edu, staging, IOVA_DATA);
	marker("    # bench-window end name=peer.after kernel=linux smmu=mmio pages=%" PRIu64 "\n", pages);

	if (perf >= 0) {
		result(pages, "unmap", raw > overhead ? raw - overhead : 0, "insns");
		result(pages, "unmap_raw", raw, "insns");
	}
	/* The device must not read the old page: QEMU delivers zeros for a faulting read. */
	result(pages, "faulted_after", after != pattern(0), "bool");
	result(pages, "touched", touched, "pages");
	if (after == pattern(0))
		fail("%" PRIu64 " pages: edu still read page 0 after the unmap", pages);
	munmap(mem, size);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc != 3) {
		fprintf(stderr, "usage: %s BDF PAGES[,PAGES...]\n", argv[0]);
		return 2;
	}
	printf("KTAP version 1\n1..1\n");
	int perf = perf_open();
	if (perf >= 0)
		printf("# bench-counter unit=insns source=perf-hw-instructions\n");
	else
		printf("# bench-counter unit=none source=none (perf_event_open: %s)\n", strerror(errno));

	struct vfio v;
	vfio_open(&v, argv[1]);
	volatile uint32_t *staging = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (staging == MAP_FAILED || vfio_map(&v, (void *)staging, IOVA_STAGING, PAGE))
		die("staging page");

	/* What the counting itself retires (ENABLE ... DISABLE around nothing): subtracted. */
	int rc;
	uint64_t overhead = counted_unmap(perf, v.container, NULL, &rc);
	if (perf >= 0)
		printf("    # bench name=peer.counter kernel=linux metric=overhead value=%" PRIu64 " unit=insns\n", overhead);

	char *list = argv[2], *save = NULL;
	for (char *s = strtok_r(list, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
		char *end;
		unsigned long long pages = strtoull(s, &end, 10);
		if (*end || pages == 0) {
			fail("`%s` is not a page count", s);
			continue;
		}
		one_size(&v, perf, overhead, staging, pages);
	}
	if (failures)
		printf("not ok 1 peer # %d checks failed\n", failures);
	else
		printf("ok 1 peer\n");
	fflush(stdout);
	return failures ? 1 : 0;
}
