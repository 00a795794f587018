# Sourced by scripts/emu-asan.sh and scripts/emu-tsan.sh.
#
# preload_sanitizer NAME: makes cargo run the test binaries with the C++ compiler's
# lib<NAME>.so preloaded (cargo's target runner `env LD_PRELOAD=…`; only the test binaries get
# it, not cargo or rustc). The Rust side is not instrumented, so the sanitizer's runtime must
# come first in the process. Exits when the library is missing.
preload_sanitizer() {
  local name=$1 lib host runner_var
  lib=$("${CXX:-g++}" -print-file-name="lib$name.so")
  if [ ! -e "$lib" ]; then
    echo "$(basename "$0"): lib$name.so not found (install the compiler's lib$name)" >&2
    exit 1
  fi
  host=$(rustc -vV | sed -n 's/^host: //p')
  runner_var="CARGO_TARGET_$(echo "$host" | tr 'a-z-' 'A-Z_')_RUNNER"
  export "$runner_var"="env LD_PRELOAD=$lib"
}
