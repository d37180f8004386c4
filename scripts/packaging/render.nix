# Renders attribute sets as systemd unit-file lines the way NixOS writes serviceConfig: one
# KEY=VALUE line per list element, booleans as true/false, keys in sorted order. Shared by
# eval-module.nix and scripts/check-packaging so both compare like with like.
rec {
  value =
    v:
    if v == true then
      "true"
    else if v == false then
      "false"
    else
      toString v;
  lines =
    attrs:
    builtins.concatStringsSep "" (
      map (
        key:
        let
          v = attrs.${key};
        in
        builtins.concatStringsSep "" (map (x: "${key}=${value x}\n") (if builtins.isList v then v else [ v ]))
      ) (builtins.attrNames attrs)
    );
  section = name: attrs: "[${name}]\n" + lines attrs;
}
