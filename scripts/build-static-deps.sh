#!/usr/bin/env bash
# Builds position-independent static libbpf, libelf and zlib from Debian's
# source packages into build/deps. Debian ships these archives without -fPIC,
# so they cannot be linked into a Python extension module as they are.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out="$top/build/deps"
[ -f "$out/lib/libbpf.a" ] && [ -f "$out/lib/libelf.a" ] && [ -f "$out/lib/libz.a" ] && exit 0

work="$top/build/deps-src"
rm -rf "$work" && mkdir -p "$work/lists/partial" "$out/lib" "$out/include"
cd "$work"
# A private apt configuration: the host's sources.list is left untouched.
printf 'deb-src http://deb.debian.org/debian bookworm main\n' > sources.list
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$work/lists" -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update -qq
apt-get "${apt_opts[@]}" source --download-only -qq zlib elfutils libbpf

jobs=$(nproc)
export CFLAGS="-O2 -fPIC -g0"

tar xjf zlib_*.orig.tar.bz2 && cd zlib-*/
./configure --static --prefix="$out" >/dev/null
make -s -j"$jobs" libz.a && make -s install >/dev/null
cd "$work"

tar xjf elfutils_*.orig.tar.bz2 && cd elfutils-*/
CPPFLAGS="-I$out/include" LDFLAGS="-L$out/lib" ./configure -q --disable-debuginfod --disable-libdebuginfod \
    --without-bzlib --without-lzma --without-zstd --disable-nls >/dev/null
make -s -C lib -j"$jobs" >/dev/null && make -s -C libelf -j"$jobs" libelf.a >/dev/null
cp libelf/libelf.a "$out/lib/" && cp libelf/libelf.h libelf/gelf.h libelf/nlist.h "$out/include/"
cd "$work"

mkdir -p "$work/libbpf-obj"
tar xzf libbpf_*.orig.tar.gz && cd libbpf-*/src
make -s -j"$jobs" BUILD_STATIC_ONLY=1 OBJDIR="$work/libbpf-obj" DESTDIR="$out" PREFIX= LIBDIR=/lib INCLUDEDIR=/include \
    EXTRA_CFLAGS="-fPIC -I$out/include" install >/dev/null
rm -rf "$work"
echo "static libbpf, libelf, zlib built in $out"
