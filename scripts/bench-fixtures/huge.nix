# The memory benchmark's closure: one path holding a single file of `sizeMiB` MiB (default
# 1024) of base64 text from /dev/urandom, like closure.nix's big paths (compressible to about
# 3/4). `nonce` forces a fresh build.
{ sizeMiB ? "1024", nonce ? "" }:
derivation {
  name = "bench-huge";
  inherit nonce;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" ''
    mkdir $out
    head -c ${toString ((builtins.fromJSON sizeMiB) * 1024 * 1024 * 3 / 4)} /dev/urandom \
      | base64 -w 76 > $out/blob
  '' ];
  PATH = "/bin:/usr/bin";
}
