"""Builds the singleflight extension: SWIG output of the shared interface,
compiled against the installed libsingleflight (located with pkg-config).

Everything generated goes under the build directory, SF_PY_BUILD_BASE or
else a temporary directory removed afterwards: an install leaves the
checkout as it found it.
"""

import atexit
import os
import shlex
import shutil
import subprocess
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
SWIG_SHARED = os.path.dirname(HERE)  # bindings/swig: singleflight.i, sfswig.hpp
INTERFACE = os.path.join(HERE, "singleflight_core.i")


def pkg_config(*args):
    try:
        out = subprocess.check_output(["pkg-config", *args, "singleflight"], text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(
            "singleflight: pkg-config cannot find libsingleflight (%s); "
            "install it or point PKG_CONFIG_PATH at its singleflight.pc" % exc
        )
    return out.strip()


class SwigBuildExt(build_ext):
    """Generates the wrapper with SWIG into build_temp and the Python half
    into the package's build directory, then compiles as usual."""

    def build_extension(self, ext):
        swig = shutil.which(os.environ.get("SWIG", "swig")) or shutil.which("swig4.0")
        if not swig:
            raise SystemExit("singleflight: swig (4.0 or later) is needed to build")
        os.makedirs(self.build_temp, exist_ok=True)
        package_dir = os.path.dirname(self.get_ext_fullpath(ext.name))
        os.makedirs(package_dir, exist_ok=True)
        wrapper = os.path.join(self.build_temp, "singleflight_core_wrap.cxx")
        subprocess.check_call([
            swig, "-c++", "-python", "-threads",
            "-I" + SWIG_SHARED,
            "-outdir", package_dir,
            "-o", wrapper,
            INTERFACE,
        ])
        ext.sources = [wrapper]
        super().build_extension(ext)


cflags = shlex.split(pkg_config("--cflags-only-I"))
# A relocatable .pc gives ".../lib/pkgconfig/../../lib": the RUNPATH reads
# better, and means the same, without the detour.
libdir = os.path.normpath(pkg_config("--variable=libdir"))

extension = Extension(
    "libsingleflight._singleflight_core",
    sources=["singleflight_core.i"],  # replaced by the generated wrapper in SwigBuildExt
    include_dirs=[HERE, SWIG_SHARED] + [f[2:] for f in cflags if f.startswith("-I")],
    library_dirs=[libdir],
    libraries=["singleflight"],
    # The module finds the library where pkg-config found it, without
    # LD_LIBRARY_PATH.
    runtime_library_dirs=[libdir],
    extra_compile_args=["-std=c++17"],
    language="c++",
)

build_base = os.environ.get("SF_PY_BUILD_BASE")
if build_base:
    os.makedirs(build_base, exist_ok=True)
else:
    # pip builds in the source folder; each of its build steps runs this file
    # afresh and takes its outputs to pip's own directories before exiting.
    build_base = tempfile.mkdtemp(prefix="libsingleflight-build-")
    atexit.register(shutil.rmtree, build_base, True)

setup(
    version=pkg_config("--modversion"),
    ext_modules=[extension],
    cmdclass={"build_ext": SwigBuildExt},
    options={
        "build": {"build_base": build_base},
        "egg_info": {"egg_base": build_base},
    },
)
