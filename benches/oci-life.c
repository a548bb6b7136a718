/* One container's life through an OCI runtime, driven the way a shim drives it:
 * `RUNTIME --root ROOT create --bundle BUNDLE --pid-file PIDFILE ID`, `start ID`, a
 * wait for the container's first process (reparented to this process, a subreaper,
 * once `create` has exited), `delete ID`. Prints the wall time of each run in
 * milliseconds, one line a run; exits non-zero if any step fails or the container's
 * process exits non-zero.
 *
 *   oci-life RUNTIME ROOT BUNDLE RUNS
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int step(char *const argv[])
{
	pid_t p = fork();
	if (p < 0)
		return -1;
	if (p == 0) {
		execv(argv[0], argv);
		_exit(127);
	}
	int st;
	while (waitpid(p, &st, 0) < 0)
		if (errno != EINTR)
			return -1;
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "oci-life: %s %s: status %#x\n", argv[0], argv[3], st);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: oci-life RUNTIME ROOT BUNDLE RUNS\n");
		return 2;
	}
	char *rt = argv[1], *root = argv[2], *bundle = argv[3];
	int runs = atoi(argv[4]);
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
		perror("oci-life: PR_SET_CHILD_SUBREAPER");
		return 1;
	}
	char pidfile[4096];
	snprintf(pidfile, sizeof pidfile, "%s/life.pid", root);
	for (int i = 0; i < runs; i++) {
		char id[64];
		snprintf(id, sizeof id, "life-%d-%d", (int)getpid(), i);
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		char *create[] = {rt, "--root", root, "create", "--bundle", bundle,
				  "--pid-file", pidfile, id, NULL};
		if (step(create) != 0)
			return 1;
		FILE *f = fopen(pidfile, "r");
		int pid = 0;
		if (!f || fscanf(f, "%d", &pid) != 1 || pid <= 0) {
			fprintf(stderr, "oci-life: no pid in %s\n", pidfile);
			return 1;
		}
		fclose(f);
		char *start[] = {rt, "--root", root, "start", id, NULL};
		if (step(start) != 0)
			return 1;
		int st;
		while (waitpid(pid, &st, 0) < 0)
			if (errno != EINTR) {
				fprintf(stderr, "oci-life: pid %d is not this process's child\n", pid);
				return 1;
			}
		char *del[] = {rt, "--root", root, "delete", id, NULL};
		if (step(del) != 0)
			return 1;
		clock_gettime(CLOCK_MONOTONIC, &b);
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "oci-life: the container's process: status %#x\n", st);
			return 1;
		}
		printf("%.3f\n", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6);
	}
	return 0;
}
