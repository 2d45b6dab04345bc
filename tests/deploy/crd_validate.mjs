// Validates custom resources against their CRDs' schemas, as compiled by kubernetes-models
// (generated from the upstream CRDs). Reads a JSON list of resources on stdin; prints a JSON
// list with, per resource, null (valid) or the validation error.
import { readFileSync } from "node:fs";

const MODELS = {
  "gateway.networking.k8s.io/v1/GRPCRoute":
    "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/GRPCRoute",
  "monitoring.coreos.com/v1/ServiceMonitor":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
};

const resources = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const resource of resources) {
  const key = `${resource.apiVersion}/${resource.kind}`;
  if (!(key in MODELS)) {
    results.push(`no CRD validator for ${key}`);
    continue;
  }
  const module = await import(MODELS[key]);
  try {
    new module[resource.kind](resource).validate();
    results.push(null);
  } catch (error) {
    results.push(String(error.message || error));
  }
}
console.log(JSON.stringify(results));
