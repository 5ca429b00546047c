-- Argo CD health check for every storage.cairn.dev kind. It reads the same
-- kstatus fields Flux reads: observedGeneration against generation, then the
-- Stalled, Reconciling and Ready conditions.
local hs = { status = "Progressing", message = "Waiting for Cairn to reconcile" }
if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Suspended: no new runs start"
  return hs
end
if obj.status == nil or obj.status.observedGeneration == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration < generation then
  hs.message = "Waiting for Cairn to observe generation " .. tostring(generation)
  return hs
end
local ready, reconciling, stalled
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" then ready = c end
    if c.type == "Reconciling" and c.status == "True" then reconciling = c end
    if c.type == "Stalled" and c.status == "True" then stalled = c end
  end
end
if stalled ~= nil then
  hs.status = "Degraded"
  hs.message = (stalled.reason or "Stalled") .. ": " .. (stalled.message or "")
  return hs
end
if reconciling ~= nil then
  hs.message = (reconciling.reason or "Reconciling") .. ": " .. (reconciling.message or "")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
  return hs
end
return hs
