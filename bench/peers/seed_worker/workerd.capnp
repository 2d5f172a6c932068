# workerd config for the seed Worker under plain `workerd serve`.
#
# The bench copies this file beside the esbuild bundle of worker.js
# (worker.bundle.js, the `openai` package inlined) and runs
#   workerd serve workerd.capnp --socket-addr http=127.0.0.1:PORT
# with OPENAI_BASE_URL (and optionally OPENAI_API_KEY) in the environment.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "seed", worker = .seedWorker),
    # Outbound fetch(): workerd's default network only reaches public addresses;
    # the bench's fake upstream is on loopback.
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [
    (name = "http", address = "127.0.0.1:8787", http = (), service = "seed"),
  ],
);

const seedWorker :Workerd.Worker = (
  modules = [
    (name = "worker.js", esModule = embed "worker.bundle.js"),
  ],
  compatibilityDate = "2025-01-01",
  bindings = [
    (name = "OPENAI_BASE_URL", fromEnvironment = "OPENAI_BASE_URL"),
    (name = "OPENAI_API_KEY", fromEnvironment = "OPENAI_API_KEY"),
  ],
  globalOutbound = "internet",
);
