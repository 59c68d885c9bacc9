"""Build a firmware bundle (:mod:`lightning_modules.deploy.firmware`) for a Cortex-M core, run it in QEMU
and count the instructions of one inference.

* **library**: TensorFlow Lite Micro with CMSIS-NN kernels, built once per source archive and core with
  TFLM's own Makefile (``TARGET=cortex_m_qemu``) from the offline source archive
  (``../shared/mcu/tflm-cortexm-src.tar.gz``, or ``$TINYML_MCU_BUNDLE``), cached under
  ``$TINYML_MCU_CACHE_DIR`` (default ``~/.cache/tinyml-pruning``) in a folder keyed on the archive's
  SHA-256; a lock file makes concurrent builders wait for one build.
* **firmware**: the bundle's sources, :file:`mcu_files/startup.c` and the linker script
  :file:`mcu_files/mps2.ld` (flash at 0, RAM at 0x20000000), compiled with ``arm-none-eabi-gcc`` and the
  library's flags; flash = text + data, RAM = data + bss (tensor arena included), from
  ``arm-none-eabi-size``; the stack is reserved apart and its high-water mark is printed by the firmware.
* **emulation**: ``qemu-system-arm`` system mode on an MPS2 board with semihosting output, bounded by a
  timeout; instructions between the ``tinyml_inference_begin``/``_end`` markers counted by
  :file:`mcu_files/icount_plugin.c`. QEMU models no pipeline, caches or wait states: a count is
  instructions, not cycles (:mod:`lightning_modules.deploy.mcu_latency` turns it into an estimate).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_modules.deploy.firmware import MCU_FILES, bundle_sources

REPO_ROOT: Path = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE: Path = (REPO_ROOT / ".." / "shared" / "mcu" / "tflm-cortexm-src.tar.gz").resolve()

#: QEMU board per core (each has 4 MB SSRAM at 0 and 4 MB at 0x20000000).
BOARDS: dict[str, str] = {"cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500", "cortex-m3": "mps2-an385"}

#: Host programs the build and the emulation need, and the Debian packages that bring them.
TOOLS: dict[str, str] = {"arm-none-eabi-gcc": "gcc-arm-none-eabi", "arm-none-eabi-g++": "gcc-arm-none-eabi",
                         "arm-none-eabi-size": "binutils-arm-none-eabi", "arm-none-eabi-nm": "binutils-arm-none-eabi",
                         "qemu-system-arm": "qemu-system-arm", "make": "make", "gcc": "gcc"}
APT_PACKAGES: str = ("gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm "
                     "gcc make python3-numpy python3-pil")


def arch_flags(arch: str) -> list[str]:
    """Target flags of TFLM's ``cortex_m_qemu`` target (``targets/cortex_m_qemu_makefile.inc``)."""
    return [f"-mcpu={arch}", "-mthumb", "-mfloat-abi=soft", "-funsigned-char", "-mlittle-endian",
            "-fomit-frame-pointer"]


#: The library's C++ flags that a translation unit linked with it must share (the defines change TFLM's
#: struct layouts and kernel selection); as TFLM's Makefile sets them for ``OPTIMIZED_KERNEL_DIR=cmsis_nn``.
CXX_FLAGS: list[str] = ["-std=c++17", "-Os", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics",
                        "-fno-unwind-tables", "-ffunction-sections", "-fdata-sections", "-DTF_LITE_STATIC_MEMORY",
                        "-DTF_LITE_DISABLE_X86_NEON", "-DCMSIS_NN", "-DTF_LITE_MCU_DEBUG_LOG", "-Wall"]

#: Include folders, relative to the TFLM source root.
INCLUDES: list[str] = [".", "tensorflow/lite/micro/tools/make/downloads/flatbuffers/include",
                       "tensorflow/lite/micro/tools/make/downloads/gemmlowp",
                       "tensorflow/lite/micro/tools/make/downloads/cmsis_nn/Include",
                       "tensorflow/lite/micro/tools/make/downloads/cmsis/CMSIS/Core/Include"]


class ToolchainMissing(RuntimeError):
    """A program, the source archive or a Python with numpy/PIL for TFLM's Makefile is absent."""


class FirmwareRunError(RuntimeError):
    """The firmware did not build, crashed, hung or printed no result; the message has its output."""


class FirmwareTooLarge(FirmwareRunError):
    """The model or the linked firmware does not fit the linker script's flash; one line with both sizes."""


def mcu_cache_dir() -> Path:
    """Where the TFLM library builds are cached (content-keyed, so sessions and runs may share them)."""
    return Path(os.environ.get("TINYML_MCU_CACHE_DIR") or Path.home() / ".cache" / "tinyml-pruning")


def default_bundle() -> Path:
    return Path(os.environ.get("TINYML_MCU_BUNDLE") or DEFAULT_BUNDLE)


def _make_python() -> str | None:
    """A ``python3`` with numpy and PIL (TFLM's Makefile runs ``generate_cc_arrays.py`` on every call)."""
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if candidate and Path(candidate).exists() and subprocess.run(
                [candidate, "-c", "import numpy, PIL"], capture_output=True).returncode == 0:
            return candidate
    return None


def missing_toolchain(bundle: str | Path | None = None) -> list[str]:
    """What is missing to build and emulate firmware (empty: everything is there)."""
    missing = [f"{tool} (apt: {package})" for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if _make_python() is None:
        missing.append("python3 with numpy and PIL for TFLM's Makefile (apt: python3-numpy python3-pil)")
    bundle = Path(bundle) if bundle else default_bundle()
    if not bundle.is_file():
        missing.append(f"the TFLM source archive {bundle} (set TINYML_MCU_BUNDLE)")
    return missing


def require_toolchain(bundle: str | Path | None = None) -> None:
    missing = missing_toolchain(bundle)
    if missing:
        raise ToolchainMissing(f"Cortex-M firmware needs {'; '.join(missing)} (apt-get install {APT_PACKAGES})")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TflmLibrary:
    """A built ``libtensorflow-microlite.a`` and the source tree it came from."""

    root: Path
    arch: str
    archive: Path
    bundle_sha256: str

    def compile_flags(self) -> list[str]:
        return [*CXX_FLAGS, *arch_flags(self.arch), *(f"-I{self.root / inc}" for inc in INCLUDES)]


def _extract(bundle: Path, base: Path) -> Path:
    """Unpack the source archive once into ``base/tflite-micro`` (staged, then renamed)."""
    root = base / "tflite-micro"
    if (base / ".extracted").is_file() and root.is_dir():
        return root
    staging = Path(tempfile.mkdtemp(prefix=".extract.", dir=base))
    try:
        with tarfile.open(bundle) as tar:
            try:
                tar.extractall(staging, filter="data")  # refuses members that would land outside
            except TypeError:  # Python without extraction filters (before 3.10.12 / 3.11.4)
                tar.extractall(staging)
        if root.exists():
            shutil.rmtree(root)
        (staging / "tflite-micro").rename(root)
        (base / ".extracted").write_text(bundle.name + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def tflm_library(arch: str = "cortex-m4", bundle: str | Path | None = None, cache_dir: str | Path | None = None,
                 jobs: int = 2, nice: int = 10, timeout_s: float = 3600.0) -> TflmLibrary:
    """The TFLM + CMSIS-NN library for ``arch``, built on first use (8-14 min on two busy cores) and then
    read from the cache (keyed on the archive's SHA-256 and the core)."""
    bundle = Path(bundle) if bundle else default_bundle()
    require_toolchain(bundle)
    sha = sha256_file(bundle)
    base = (Path(cache_dir) if cache_dir else mcu_cache_dir()) / f"tflm-{sha[:16]}"
    base.mkdir(parents=True, exist_ok=True)
    stamp = base / f"built-{arch}.json"
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others find its stamp
        root = _extract(bundle, base)
        archive = root / "gen" / f"cortex_m_qemu_{arch}_default_cmsis_nn_gcc" / "lib" / "libtensorflow-microlite.a"
        if not (stamp.is_file() and archive.is_file()):
            stamp.unlink(missing_ok=True)
            env = {**os.environ, "PATH": os.pathsep.join([str(Path(_make_python() or "python3").parent),
                                                          os.environ.get("PATH", "")])}
            command = ["nice", "-n", str(nice), "make", f"-j{jobs}", "-f", "tensorflow/lite/micro/tools/make/Makefile",
                       "TARGET=cortex_m_qemu", f"TARGET_ARCH={arch}", "OPTIMIZED_KERNEL_DIR=cmsis_nn",
                       "BUILD_TYPE=default", "microlite"]
            done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout_s)
            if done.returncode != 0 or not archive.is_file():
                raise FirmwareRunError(f"TFLM library build for {arch} failed (exit {done.returncode}):\n"
                                       f"{(done.stdout + done.stderr)[-3000:]}")
            stamp.write_text(json.dumps({"arch": arch, "bundle_sha256": sha, "command": " ".join(command[3:])}) + "\n")
    return TflmLibrary(root=root, arch=arch, archive=archive, bundle_sha256=sha)


def _run(command: list[str], cwd: Path | None = None, timeout_s: float = 600.0) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise FirmwareRunError(f"{Path(command[0]).name} failed (exit {done.returncode}):\n"
                               f"{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


@dataclass
class Firmware:
    """A linked firmware image and its memory footprint (bytes)."""

    elf: Path
    text: int
    data: int
    bss: int
    symbols: dict[str, int] = field(default_factory=dict)

    @property
    def flash(self) -> int:
        return self.text + self.data

    @property
    def ram(self) -> int:
        return self.data + self.bss


#: ``FLASH (rx) : ORIGIN = ..., LENGTH = 4M`` in a GNU ld ``MEMORY`` block.
_FLASH_REGION = re.compile(r"\bFLASH\s*\([^)]*\)\s*:\s*ORIGIN\s*=\s*[^,]+,\s*LENGTH\s*=\s*(0x[0-9a-fA-F]+|\d+)\s*([KM]?)")
_OVERFLOW = re.compile(r"region `FLASH' overflowed by (\d+) bytes")


def flash_length(linker_script: str | Path) -> int:
    """Bytes of the ``FLASH`` memory region of a GNU ld linker script."""
    match = _FLASH_REGION.search(Path(linker_script).read_text())
    if not match:
        raise FirmwareRunError(f"{linker_script} defines no FLASH memory region (FLASH (rx) : ORIGIN = ..., LENGTH = ...)")
    return int(match.group(1), 0) * {"": 1, "K": 1 << 10, "M": 1 << 20}[match.group(2)]


def build_firmware(bundle_dir: str | Path, library: TflmLibrary, out_dir: str | Path | None = None,
                   stack_bytes: int = 0x10000, defines: tuple[str, ...] = (),
                   linker_script: str | Path | None = None) -> Firmware:
    """Compile the bundle in ``bundle_dir`` with the start-up code and link it against ``library`` with
    ``linker_script`` (default :file:`mcu_files/mps2.ld`). ``defines``: preprocessor names for the
    bundle's sources (``TINYML_OP_MARKERS``: a marker call before and after every operator, see
    :file:`mcu_files/main.cc`). The bundle folder is on the assembler's include path, for a model
    embedded with ``.incbin``. A model, or a firmware, larger than the script's flash is a
    :class:`FirmwareTooLarge` naming both sizes."""
    bundle_dir = Path(bundle_dir)
    script = Path(linker_script) if linker_script else MCU_FILES / "mps2.ld"
    flash = flash_length(script)
    model = bundle_dir / "model.tflite"
    if model.is_file() and model.stat().st_size > flash:
        raise FirmwareTooLarge(f"the model ({model.stat().st_size:,} bytes) is larger than the flash of "
                               f"{script.name} ({flash:,} bytes)")
    out = Path(out_dir) if out_dir else bundle_dir / f"build-{library.arch}"
    out.mkdir(parents=True, exist_ok=True)
    flags = [*library.compile_flags(), f"-I{bundle_dir}", f"-Wa,-I{bundle_dir}", *(f"-D{name}" for name in defines)]
    objects = []
    for source in bundle_sources(bundle_dir):
        objects.append(out / (source.stem + ".o"))
        _run(["arm-none-eabi-g++", *flags, "-c", str(source), "-o", str(objects[-1])])
    objects.append(out / "startup.o")
    _run(["arm-none-eabi-gcc", "-std=c11", "-Os", "-Wall", *arch_flags(library.arch), "--specs=rdimon.specs",
          "-c", str(MCU_FILES / "startup.c"), "-o", str(objects[-1])])
    elf = out / "firmware.elf"
    try:
        _run(["arm-none-eabi-g++", *arch_flags(library.arch), "--specs=rdimon.specs", "-nostartfiles",
              "-T", str(script), f"-Wl,--defsym=STACK_SIZE={stack_bytes}", "-Wl,--gc-sections",
              f"-Wl,-Map={out / 'firmware.map'}", *map(str, objects), str(library.archive), "-lm", "-o", str(elf)])
    except FirmwareRunError as err:
        over = _OVERFLOW.search(str(err))
        if over:
            raise FirmwareTooLarge(f"the firmware ({flash + int(over.group(1)):,} bytes of code, constants and "
                                   f"model) is larger than the flash of {script.name} ({flash:,} bytes)") from None
        raise
    sizes = _run(["arm-none-eabi-size", "-B", str(elf)]).splitlines()[1].split()
    return Firmware(elf=elf, text=int(sizes[0]), data=int(sizes[1]), bss=int(sizes[2]), symbols=symbols(elf))


def symbols(elf: str | Path) -> dict[str, int]:
    """Addresses of the firmware's global symbols (``arm-none-eabi-nm``)."""
    table = {}
    for line in _run(["arm-none-eabi-nm", str(elf)]).splitlines():
        parts = line.split()
        if len(parts) == 3:
            table[parts[2]] = int(parts[0], 16)
    return table


def icount_plugin(cache_dir: str | Path | None = None) -> Path:
    """The instruction-counting QEMU plugin, compiled once per source version."""
    source = MCU_FILES / "icount_plugin.c"
    target = (Path(cache_dir) if cache_dir else mcu_cache_dir()) / f"icount-{sha256_file(source)[:16]}.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_suffix(f".{os.getpid()}.tmp")
        _run(["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-o", str(staging), str(source)])
        staging.replace(target)
    return target


_LINE = re.compile(r"^(class|output|arena_used_bytes|arena_size_bytes|stack_used_bytes|host_output)\s+(.*)$")


def parse_output(text: str) -> dict[str, Any]:
    """The firmware's printed result: ``class``, ``outputs`` (int8 list), arena / stack bytes,
    ``host_output`` (``equal``/``DIFFERENT``), ``done``."""
    result: dict[str, Any] = {"outputs": [], "done": False}
    for line in text.splitlines():
        line = line.strip()
        if line == "done":
            result["done"] = True
        match = _LINE.match(line)
        if not match:
            continue
        key, value = match.groups()
        if key == "output":
            result["outputs"].append(int(value.split()[1]))
        elif key == "host_output":
            result[key] = value
        else:
            result[key] = int(value)
    return result


#: The marker functions around one inference, and around each operator (built with ``TINYML_OP_MARKERS``).
INFERENCE_MARKERS: tuple[str, str] = ("tinyml_inference_begin", "tinyml_inference_end")
OP_MARKERS: tuple[str, str] = ("tinyml_op_begin", "tinyml_op_end")


def run_firmware(firmware: Firmware, arch: str = "cortex-m4", count: bool = True, timeout_s: float = 300.0,
                 cache_dir: str | Path | None = None,
                 markers: tuple[str, str] = INFERENCE_MARKERS) -> dict[str, Any]:
    """Run the firmware in ``qemu-system-arm`` (killed after ``timeout_s``) and return its printed result,
    with ``instructions`` of the inference when ``count``. ``counts``: the instructions between every
    pair of ``markers`` calls in order (with :data:`OP_MARKERS`, one per operator of the inference)."""
    command = ["qemu-system-arm", "-M", BOARDS[arch], "-nographic", "-monitor", "none", "-serial", "none",
               "-semihosting-config", "enable=on,target=native", "-kernel", str(firmware.elf)]
    with tempfile.TemporaryDirectory() as tmp:
        counts = Path(tmp) / "count.txt"
        if count:
            if not set(markers) <= set(firmware.symbols):
                raise FirmwareRunError(f"the firmware has no marker functions {markers} (for the op markers, "
                                       "build it with defines=('TINYML_OP_MARKERS',))")
            begin, end = (firmware.symbols[name] for name in markers)
            command += ["-plugin", f"{icount_plugin(cache_dir)},arg=begin={begin:#x},arg=end={end:#x},arg=out={counts}"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as err:
            out = (err.stdout or b"")
            text = out.decode(errors="replace") if isinstance(out, bytes) else out
            raise FirmwareRunError(f"firmware did not finish within {timeout_s:.0f} s in QEMU "
                                   f"(a TFLM abort prints HALTED and spins):\n{text[-2000:]}") from None
        text = done.stdout + done.stderr
        result = parse_output(text)
        if count:
            lines = counts.read_text().splitlines() if counts.is_file() else []
            found = [int(line.split()[1]) for line in lines if line.startswith("instructions")]
            result["instructions"] = found[0] if found else None
            result["counts"] = found
    result.update(exit_status=done.returncode, log=text)
    # a finished run whose output differs from the host's exits 2: its outputs are returned for the caller
    # to compare; anything else unfinished is an error
    if not result["done"] or (count and result["instructions"] is None) or done.returncode not in (0, 1) \
            or (done.returncode == 1 and result.get("host_output") != "DIFFERENT"):
        raise FirmwareRunError(f"firmware run failed (QEMU exit {done.returncode}):\n{text[-2000:]}")
    return result


def firmware_figures(firmware: Firmware, run: dict[str, Any]) -> dict[str, Any]:
    """The numbers a report keeps: footprint, arena and stack on the target, instructions."""
    return {"flash_bytes": firmware.flash, "ram_bytes": firmware.ram, "text_bytes": firmware.text,
            "data_bytes": firmware.data, "bss_bytes": firmware.bss,
            **{k: run.get(k) for k in ("arena_used_bytes", "arena_size_bytes", "stack_used_bytes", "instructions",
                                       "class", "outputs", "host_output")}}
