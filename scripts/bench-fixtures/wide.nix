# The latency benchmark's closure: `count` (default 1000) independent leaf derivations, each
# writing a few bytes, and one top path whose output references all of them: count + 1 tiny
# paths, so the upload time is made of requests, not bytes. `nonce` forces a fresh build.
{ count ? "1000", nonce ? "" }:
let
  mk = name: script: attrs: derivation ({
    inherit name nonce;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/bin:/usr/bin";
  } // attrs);
  leaf = i: mk "bench-wide-leaf-${toString i}" "echo ${toString i} > $out" { };
  leaves = builtins.genList leaf (builtins.fromJSON count);
in
# The list goes in a file, not the environment: one environment string may hold only 128 KiB,
# which about 2,000 store paths would exceed.
mk "bench-wide-top" "cp $leavesPath $out" {
  leaves = map toString leaves;
  passAsFile = [ "leaves" ];
}
