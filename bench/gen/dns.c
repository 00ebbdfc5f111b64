/* The hostname rules' workload: DNS round trips and connects.
 *
 *   dns rt N       N round trips: a query for bench.allowed.test (A) from one
 *                  UDP socket to 127.0.0.153:53, where a second socket of this
 *                  process answers with one A record (127.0.0.77); the
 *                  client reads the answer. Prints mean ns per round trip.
 *   dns connect N  one round trip (the guard, if any, learns the name), then
 *                  N connect() calls of a UDP socket to 127.0.0.77:9 (each
 *                  runs the cgroup connect hook; no packet is sent). Prints
 *                  mean ns per connect.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char NAME[] = "\x05" "bench" "\x07" "allowed" "\x04" "test";

static unsigned long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static size_t query(unsigned char *q, unsigned short id)
{
	size_t n = 0;
	q[n++] = id >> 8;
	q[n++] = id;
	q[n++] = 0x01; /* RD */
	q[n++] = 0;
	q[n++] = 0; q[n++] = 1; /* qdcount */
	memset(q + n, 0, 6);
	n += 6;
	memcpy(q + n, NAME, sizeof(NAME)); /* the root's zero included */
	n += sizeof(NAME);
	q[n++] = 0; q[n++] = 1; /* A */
	q[n++] = 0; q[n++] = 1; /* IN */
	return n;
}

static size_t answer(unsigned char *a, const unsigned char *q, size_t qlen)
{
	static const unsigned char rr[] = { 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 77 };
	memcpy(a, q, qlen);
	a[2] = 0x81; /* QR, RD */
	a[3] = 0x80; /* RA */
	a[7] = 1;    /* ancount */
	memcpy(a + qlen, rr, sizeof(rr));
	return qlen + sizeof(rr);
}

static int udp(const char *addr, int port)
{
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, addr, &sa.sin_addr);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		perror("bind");
		exit(1);
	}
	return fd;
}

static void round_trip(int client, int server, const struct sockaddr_in *to, unsigned short id)
{
	unsigned char q[512], a[512], in[512];
	struct sockaddr_in from;
	socklen_t flen = sizeof(from);
	size_t qlen = query(q, id);

	if (sendto(client, q, qlen, 0, (const struct sockaddr *)to, sizeof(*to)) < 0) {
		perror("sendto");
		exit(1);
	}
	ssize_t got = recvfrom(server, in, sizeof(in), 0, (struct sockaddr *)&from, &flen);
	if (got <= 0) {
		perror("recvfrom");
		exit(1);
	}
	size_t alen = answer(a, in, got);
	sendto(server, a, alen, 0, (struct sockaddr *)&from, flen);
	if (recv(client, in, sizeof(in), 0) <= 0) {
		perror("recv");
		exit(1);
	}
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return fprintf(stderr, "usage: dns rt|connect N\n"), 2;
	long n = atol(argv[2]);
	int server = udp("127.0.0.153", 53), client = udp("127.0.0.1", 0);
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(53) };
	inet_pton(AF_INET, "127.0.0.153", &to.sin_addr);

	if (!strcmp(argv[1], "rt")) {
		round_trip(client, server, &to, 1); /* warm */
		unsigned long long t0 = now_ns();
		for (long i = 0; i < n; i++)
			round_trip(client, server, &to, (unsigned short)(i + 2));
		printf("%.1f\n", (double)(now_ns() - t0) / n);
		return 0;
	}
	round_trip(client, server, &to, 1);
	struct sockaddr_in target = { .sin_family = AF_INET, .sin_port = htons(9) };
	inet_pton(AF_INET, "127.0.0.77", &target.sin_addr);
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	unsigned long long t0 = now_ns();
	for (long i = 0; i < n; i++) {
		if (connect(fd, (struct sockaddr *)&target, sizeof(target))) {
			perror("connect");
			return 1;
		}
	}
	printf("%.1f\n", (double)(now_ns() - t0) / n);
	return 0;
}
