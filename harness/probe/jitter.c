/*
 * jitter: the host's own timer-wakeup noise, measured outside any VM (cyclictest in miniature).
 *
 *   jitter SAMPLES SLEEP_NS  ->  {"samples": N, "sleep_ns": S, "p50": ns, "p90": ns, "p99": ns, "max": ns}
 *
 * Each sample is how late a thread woke from clock_nanosleep(CLOCK_MONOTONIC, SLEEP_NS) — the
 * same hrtimer wake-up path a vCPU thread takes when KVM's timer fires while it halts. Timer
 * properties calibrate their lateness bound from it, never from the guest timers under test.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long long now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1000;
	long long sleep_ns = argc > 2 ? atoll(argv[2]) : 200000;
	if (n < 10 || n > 1000000 || sleep_ns < 1000 || sleep_ns > 100000000) {
		fprintf(stderr, "usage: jitter SAMPLES(10..1e6) SLEEP_NS(1e3..1e8)\n");
		return 2;
	}
	long long *late = malloc(sizeof(*late) * n);
	if (!late)
		return 1;
	struct timespec req = { .tv_sec = sleep_ns / 1000000000LL, .tv_nsec = sleep_ns % 1000000000LL };
	for (int i = 0; i < n; i++) {
		long long t0 = now_ns();
		clock_nanosleep(CLOCK_MONOTONIC, 0, &req, NULL);
		long long d = now_ns() - t0 - sleep_ns;
		late[i] = d < 0 ? 0 : d;
	}
	qsort(late, n, sizeof(*late), cmp);
	printf("{\"samples\": %d, \"sleep_ns\": %lld, \"p50\": %lld, \"p90\": %lld, \"p99\": %lld, \"max\": %lld}\n", n, sleep_ns,
	       late[n / 2], late[n * 9 / 10], late[n * 99 / 100], late[n - 1]);
	free(late);
	return 0;
}
