#!/usr/bin/env bash
# A BVLC Caffe 1.0 `caffe` binary for tools/bench_caffe.py, on Debian 12 (bookworm) as root:
# Debian 11 (bullseye) packaged Caffe (1.0.0+git20180821, CPU, OpenBLAS); bookworm dropped it.
# The packages and their bullseye libraries are unpacked under PREFIX (nothing is installed
# system-wide but bookworm's OpenBLAS); OpenCV's image codecs, which `caffe time` and
# `caffe train` on LMDB never call, are replaced by a stub that aborts if called.
# Bullseye is fetched from the Debian mirror this machine's apt already uses for its own
# release (as `apt-get indextargets` lists it), so no host is named here.
#   bash tools/fetch_bvlc_caffe.sh [PREFIX=/opt/caffe]   ->   PREFIX/caffe (a wrapper)
#   bash tools/fetch_bvlc_caffe.sh --mirror              ->   the mirror it would use
set -euo pipefail

debian_mirror() {
    local release
    release=$(. /etc/os-release && echo "$VERSION_CODENAME")
    apt-get indextargets --no-release-info --format '$(RELEASE) $(REPO_URI)' \
        | awk -v release="$release" '$1 == release { print $2; exit }'
}

if [ "${1:-}" = "--mirror" ]; then
    debian_mirror
    exit
fi
PREFIX=${1:-/opt/caffe}
MIRROR=$(debian_mirror)
if [ -z "$MIRROR" ]; then
    echo "fetch_bvlc_caffe.sh: this machine's apt sources hold no archive of its own release" >&2
    exit 1
fi
mkdir -p "$PREFIX/debs" "$PREFIX/stubs"
LIST=/etc/apt/sources.list.d/bullseye-caffe.list
echo "deb $MIRROR bullseye main" > "$LIST"
trap 'rm -f "$LIST"; apt-get update -qq' EXIT  # bullseye only for the download
apt-get update -qq
apt-get install -y -qq libopenblas0-pthread >/dev/null
cd "$PREFIX/debs"
for p in caffe libcaffe1 libgoogle-glog0v5 libgflags2.2 libprotobuf23 libboost-thread1.74.0 \
         libboost-system1.74.0 libboost-filesystem1.74.0 libboost-python1.74.0 libpython3.9 \
         libhdf5-103-1 libhdf5-hl-100 liblmdb0 libleveldb1d libsnappy1v5 libunwind8 libsz2 libaec0 \
         libopencv-core4.5 libopencv-imgproc4.5 libtbb2; do
    apt-get download -t bullseye "$p" >/dev/null 2>&1
done
for f in *.deb; do dpkg -x "$f" "$PREFIX"; done
# the three codec functions libcaffe links against, as stubs
cat > "$PREFIX/stubs/imgcodecs.c" <<'C'
#include <stdlib.h>
void _ZN2cv6imreadERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEEi(void) { abort(); }
void _ZN2cv8imdecodeERKNS_11_InputArrayEi(void) { abort(); }
void _ZN2cv8imencodeERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEERKNS_11_InputArrayERSt6vectorIhSaIhEERKSB_IiSaIiEE(void) { abort(); }
C
gcc -shared -fPIC -o "$PREFIX/stubs/libopencv_imgcodecs.so.4.5" -Wl,-soname,libopencv_imgcodecs.so.4.5 \
    "$PREFIX/stubs/imgcodecs.c"
cat > "$PREFIX/caffe" <<SH
#!/bin/sh
# BVLC Caffe 1.0 (Debian bullseye's CPU build) with OpenBLAS, its libraries under $PREFIX
export LD_LIBRARY_PATH=$PREFIX/stubs:$PREFIX/usr/lib/x86_64-linux-gnu:$PREFIX/usr/lib/x86_64-linux-gnu/hdf5/serial:/usr/lib/x86_64-linux-gnu/openblas-pthread
exec $PREFIX/usr/bin/caffe "\$@"
SH
chmod +x "$PREFIX/caffe"
"$PREFIX/caffe" --version
