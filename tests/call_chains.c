/* Known call chains for the calls tests: main -> a -> b -> target, N times,
 * and main -> c -> target, M times; then spin(K) calls target K times in a
 * tight loop from one site (for the rate limit). Built with frame pointers
 * and without inlining, so the kernel's user stacks are exact. */
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) int target(int x)
{
	__asm__ volatile("" ::: "memory");
	return x + 1;
}

__attribute__((noinline)) int b(int x) { return target(x) * 2; }
__attribute__((noinline)) int a(int x) { return b(x) + 1; }
__attribute__((noinline)) int c(int x) { return target(x) - 1; }

__attribute__((noinline)) long spin(long k)
{
	long s = 0;
	for (long i = 0; i < k; i++)
		s += target((int)i);
	return s;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 3, m = argc > 2 ? atoi(argv[2]) : 2;
	long k = argc > 3 ? atol(argv[3]) : 0, s = 0;

	for (int i = 0; i < n; i++)
		s += a(i);
	for (int i = 0; i < m; i++)
		s += c(i);
	s += spin(k);
	printf("%ld\n", s);
	return 0;
}
