# The benchmark's closure of real files copied from the machine (not generated data), about
# 700 MiB of NAR in three paths referenced from one top path:
#   - compilerLib: a compiler's shared libraries, over 500 MiB in one path. scripts/bench passes
#     `$(rustc --print sysroot)/lib` (librustc_driver, libLLVM and rustlib: the standard library
#     of each installed target and the bundled linker), all of it but rust-src's sources;
#   - docDir: /usr/share/doc (many small files, mostly gzipped already);
#   - pythonStdlib: a Python standard library, without __pycache__ and site-packages.
# Sandboxing must be off: the builders read these directories of the host. The arguments are
# strings, so nothing is imported into the store at evaluation. `nonce` forces a fresh build
# (scripts/bench passes a fingerprint of the sources, so a changed toolchain gives new paths).
{ compilerLib, pythonStdlib, docDir ? "/usr/share/doc", nonce ? "" }:
let
  mk = name: script: derivation {
    inherit name nonce;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "set -eu\n${script}" ];
    PATH = "/bin:/usr/bin";
  };
  compiler = mk "bench-real-compiler-libs" ''
    mkdir -p $out/lib
    tar -C "${compilerLib}" --exclude=./rustlib/src -cf - . | tar -C $out/lib -xf -
  '';
  doc = mk "bench-real-doc" ''
    cp -R "${docDir}" $out
  '';
  python = mk "bench-real-python-stdlib" ''
    mkdir -p $out/lib/python
    tar -C "${pythonStdlib}" --exclude=__pycache__ --exclude=./site-packages -cf - . \
      | tar -C $out/lib/python -xf -
  '';
in mk "bench-real-top" ''
  mkdir $out
  echo ${compiler} ${doc} ${python} > $out/refs
''
