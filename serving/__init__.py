"""cinema_trt.serving: CINEMA on Triton Inference Server.

repo.py builds the model repository (stage models + the decoupled `cinema` orchestrator),
server.py launches `tritonserver` on it, client.py talks to it over gRPC, protocol.py is
the request/response schema they share. stage_model.py and orchestrator.py run inside the
server's Python-backend stubs. See README.md beside this file.
"""
