-- Health of a timesheet-backup-operator BackupSchedule (backup.northstar.io/v1alpha1).
local hs = {}
if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
local ready = nil
local failed = nil
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    elseif condition.type == "Failed" then
      failed = condition
    end
  end
end
-- An invalid schedule (cron, time zone) never runs.
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = ready.message
  return hs
end
if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Suspended: no new Backups"
  return hs
end
-- The last run failed, until a later Backup succeeds.
if failed ~= nil and failed.status == "True" then
  hs.status = "Degraded"
  hs.message = failed.message
  return hs
end
local verification = obj.status.lastVerification
if verification ~= nil and verification.result == "Failed" then
  hs.status = "Degraded"
  hs.message = "Restore test failed: " .. (verification.message or "")
  return hs
end
hs.status = "Healthy"
if obj.status.message ~= nil then
  -- e.g. a run skipped because the previous one is still running
  hs.message = obj.status.message
elseif ready ~= nil then
  hs.message = ready.message
else
  hs.message = "Scheduled"
end
return hs
