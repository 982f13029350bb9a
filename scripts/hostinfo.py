"""The line every benchmark script prints first: the CPU's model name, its cores, the vector
extensions the kernels choose between, and the memory. Figures are comparable only on one host."""
import os

ISA = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_tile")


def host():
    name, flags = None, None
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and name is None:
                name = value.strip()
            elif key == "flags" and flags is None:
                flags = value.split()
    except OSError:
        pass
    isa = " ".join(f for f in ISA if f in (flags or [])) or "no AVX2"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{name or 'unknown CPU'}, {os.cpu_count()} cores, {isa}, {mem:.1f} GiB"
