# The benchmark closure: `smallDrvs` derivations of many small, compressible files (like
# documentation, headers and scripts) and `bigFiles` large files of base64 text from
# /dev/urandom (compressible to about 3/4, like binaries), all referenced from one top path.
# Sizes in MiB; `nonce` forces a fresh build.
{ totalMiB ? "500", nonce ? "" }:
let
  total = builtins.fromJSON totalMiB;
  bigFiles = 4;
  bigMiB = total * 8 / 10 / bigFiles;
  smallDrvs = 20;
  smallFilesEach = 400;
  # Each small file is about (20% of the total) / (drvs * files).
  smallBytes = total * 1024 * 1024 * 2 / 10 / (smallDrvs * smallFilesEach);
  mk = name: script: derivation {
    inherit name nonce;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/bin:/usr/bin";
  };
  small = i: mk "bench-small-${toString i}" ''
    mkdir -p $out/share
    head -c ${toString (smallBytes * smallFilesEach / 3)} /dev/urandom | od -An -tx1 \
      | split -a 4 -b ${toString smallBytes} - $out/share/file-
  '';
  big = i: mk "bench-big-${toString i}" ''
    mkdir $out
    head -c ${toString (bigMiB * 1024 * 1024 * 3 / 4)} /dev/urandom | base64 -w 76 > $out/blob
  '';
  range = n: builtins.genList (i: i) n;
in mk "bench-top" ''
  mkdir $out
  echo ${toString (map small (range smallDrvs))} ${toString (map big (range bigFiles))} > $out/refs
''
