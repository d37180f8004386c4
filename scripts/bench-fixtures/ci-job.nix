# The seed article's CI job, in three layers of real files with compile-like pauses (3 s each):
#   - docs: a copy of /usr/share/doc, and python: a Python standard library (no __pycache__,
#     no site-packages), built side by side;
#   - libs: a compiler's lib directory (scripts/bench-ci passes `$(rustc --print sysroot)/lib`,
#     without rust-src's sources; over 500 MiB), which depends on both (it records their paths);
#   - app: a small path referring to all three.
# `salt` makes every path new, so each run uploads everything. Sandboxing must be off: the
# builders read the host's directories, passed as strings so nothing is imported at evaluation.
{ compilerLib, pythonStdlib, docDir ? "/usr/share/doc", salt }:
let
  mk = name: script: derivation {
    inherit name salt;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "set -eu\nsleep 3\n${script}" ];
    PATH = "/bin:/usr/bin";
  };
  docs = mk "ci-docs" ''
    cp -R "${docDir}" $out
  '';
  python = mk "ci-python" ''
    mkdir -p $out/lib/python
    tar -C "${pythonStdlib}" --exclude=__pycache__ --exclude=./site-packages -cf - . \
      | tar -C $out/lib/python -xf -
  '';
  libs = mk "ci-libs" ''
    mkdir -p $out/lib $out/nix-support
    tar -C "${compilerLib}" --exclude=./rustlib/src -cf - . | tar -C $out/lib -xf -
    echo ${docs} ${python} > $out/nix-support/built-with
  '';
in mk "ci-app" ''
  mkdir -p $out/bin
  printf '#!/bin/sh\necho %s %s %s\n' ${docs} ${python} ${libs} > $out/bin/app
  chmod +x $out/bin/app
''
