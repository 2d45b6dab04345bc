"""cinema_trt.serving: CINEMA on Triton Inference Server.

repo.py builds the model repository (stage models + the decoupled `cinema` orchestrator),
server.py launches `tritonserver` on it, client.py talks to it over gRPC, protocol.py is
the request/response schema they share. stage_model.py and orchestrator.py run inside the
server's Python-backend stubs; stage_checks.py bounds what a stage accepts, warmup.py its
first execution. watchdog.py reloads a model whose stub died, supervisor.py restarts a
crashed server; faults.py and soak.py are the fault soak. See README.md beside this file.
"""
