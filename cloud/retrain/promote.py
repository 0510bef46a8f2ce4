"""Training-completion Lambda: judge the challenger against the champion; roll out only a winner.

Triggered by EventBridge ``SageMaker Training Job State Change`` events for jobs named ``<JOB_PREFIX>-…``
(the template's rule filters on the prefix and the final states). For each job, once (the job's registry
item is claimed; a re-delivered event finds it claimed and does nothing):

* job ``Failed``/``Stopped`` → decision ``failed`` with SageMaker's reason;
* job ``Completed`` → read ``model.tar.gz`` (:mod:`cloud.retrain.challenger`: ``model.tflite`` +
  ``model.json``; the TFLite file must match ``model.json``'s ``tflite_sha256`` when given) and take the
  challenger's score, the ``PROMOTION_METRIC`` of ``model.json["metrics"]`` (default: the hybrid method's
  held-out horizon RMSE in percentage points, averaged over the held-out datasets), else the job's final
  metrics ``held_out_<dataset>_hybrid_rmse_pp`` (averaged; the trainer prints them and the job's metric
  definitions capture them); lower is better. The challenger wins if there is no champion, or if its score
  beats the champion's by more than ``MIN_IMPROVEMENT`` (relative). A loser → decision ``rejected``; nothing
  is uploaded or deployed.
* a winner → model files copied to ``<release prefix><version>/``; a new ``com.battwin.SohModel`` component
  version (artifact-only recipe, inline) and a deployment to the fleet's thing group that keeps every other
  component of the group's current deployment and pins the agent component to ``AGENT_COMPONENT_VERSION``
  (when set); then the champion item is replaced and the decision ``promoted`` recorded.

Every decision goes to the log and to the ModelRegistry table. An AWS error releases the claim and raises,
so Lambda's retry judges the job again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud.aws import (
    LambdaContext,
    client,
    env,
    env_float,
    request_id,
    setup_lambda_logging,
)
from cloud.lake import normalise_prefix
from cloud.retrain.challenger import (
    DEFAULT_METRIC,
    FINAL_METRIC,
    MODEL_JSON,
    MODEL_TFLITE,
    Challenger,
    ModelError,
    metric_value,
    read_model_tar,
    split_s3,
)
from cloud.retrain.registry import Registry

log = logging.getLogger("battwin.cloud.retrain.promote")


class PromoteSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    bucket: str
    registry_table: str
    thing_group_arn: str = Field(pattern=r"^arn:aws[a-z\-]*:iot:[^:]+:\d{12}:thinggroup/.+")
    component_name: str = "com.battwin.SohModel"
    component_version_prefix: str = Field(default="1.0", pattern=r"^\d+\.\d+$")
    agent_component_name: str = "com.battwin.Agent"
    agent_component_version: str | None = None
    release_prefix: str = "models/released/"
    job_prefix: str = "battwin-soh"
    metric: str = DEFAULT_METRIC
    min_improvement: float = Field(default=0.0, ge=0.0, lt=1.0)

    @classmethod
    def from_env(cls) -> PromoteSettings:
        return cls(
            bucket=env("DATA_BUCKET"),
            registry_table=env("REGISTRY_TABLE"),
            thing_group_arn=env("THING_GROUP_ARN"),
            component_name=env("MODEL_COMPONENT_NAME", "com.battwin.SohModel"),
            component_version_prefix=env("MODEL_COMPONENT_VERSION_PREFIX", "1.0"),
            agent_component_name=env("AGENT_COMPONENT_NAME", "com.battwin.Agent"),
            agent_component_version=env("AGENT_COMPONENT_VERSION", "") or None,
            release_prefix=env("RELEASE_PREFIX", "models/released/"),
            job_prefix=env("JOB_PREFIX", "battwin-soh"),
            metric=env("PROMOTION_METRIC", DEFAULT_METRIC),
            min_improvement=env_float("MIN_IMPROVEMENT", 0.0),
        )


class MetricDatum(BaseModel):
    model_config = ConfigDict(extra="allow")

    MetricName: str
    Value: float


class ModelArtifactsDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    S3ModelArtifacts: str


class TrainingJobDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    TrainingJobName: str
    TrainingJobStatus: str
    TrainingJobArn: str | None = None
    FailureReason: str | None = None
    SecondaryStatus: str | None = None
    ModelArtifacts: ModelArtifactsDetail | None = None
    FinalMetricDataList: list[MetricDatum] | None = None


class TrainingStateChange(BaseModel):
    """EventBridge ``SageMaker Training Job State Change`` event."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    source: str = "aws.sagemaker"
    detail_type: str = Field(default="SageMaker Training Job State Change", alias="detail-type")
    detail: TrainingJobDetail


class Promoter:
    def __init__(
        self,
        settings: PromoteSettings,
        *,
        s3: Any = None,
        greengrass: Any = None,
        registry: Registry | None = None,
    ) -> None:
        self.settings = settings
        self.s3 = s3 or client("s3")
        self.greengrass = greengrass or client("greengrassv2")
        self.registry = registry or Registry(settings.registry_table)

    def handle(self, event: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        ev = TrainingStateChange.model_validate(event)
        d = ev.detail
        job = d.TrainingJobName
        if not job.startswith(self.settings.job_prefix + "-"):
            log.info("not a battwin training job; ignored", extra={"job": job})
            return {"status": "ignored", "job_name": job}
        if d.TrainingJobStatus not in ("Completed", "Failed", "Stopped"):
            return {"status": "ignored", "job_name": job, "reason": f"status {d.TrainingJobStatus}"}
        if not self.registry.claim(job, now):
            log.info("training job already judged; event ignored", extra={"job": job})
            return {"status": "duplicate", "job_name": job}
        try:
            return self._judge(d, now)
        except Exception as exc:
            log.exception("judging the training job failed; released for a retry", extra={"job": job})
            self.registry.record(job, "error", f"{type(exc).__name__}: {exc}"[:1000], now=now, update_job=False)
            self.registry.release(job)
            raise

    # -- judging ----------------------------------------------------------------------------------
    def _judge(self, d: TrainingJobDetail, now: float) -> dict[str, Any]:
        job = d.TrainingJobName
        if d.TrainingJobStatus != "Completed":
            reason = d.FailureReason or f"training job {d.TrainingJobStatus.lower()}"
            return self._decide(job, "failed", reason, now)
        if d.ModelArtifacts is None:
            return self._decide(job, "rejected", "the job reported no model artifacts", now)
        try:
            challenger = self._load(d)
        except ModelError as exc:
            return self._decide(job, "rejected", f"unusable model: {exc}", now)
        champion = self.registry.champion()
        wins, reason = self.compare(challenger, champion)
        common = {
            "metric": self.settings.metric,
            "challenger_score": challenger.score,
            "score_source": challenger.score_source,
            "champion_job": champion.get("job_name") if champion else None,
            "champion_score": champion.get("score") if champion else None,
            "model_version": str(challenger.model_json.get("version", "")) or None,
        }
        if not wins:
            return self._decide(job, "rejected", reason, now, **common)
        version, uris = self._release(challenger)
        deployment_id = self._deploy(version)
        ok = self.registry.set_champion(
            {
                "job_name": job,
                "score": challenger.score,
                "metric": self.settings.metric,
                "component_name": self.settings.component_name,
                "component_version": version,
                "deployment_id": deployment_id,
                "model_version": common["model_version"],
                "model_uris": uris,
                "promoted_at": now,
            },
            previous_job=champion.get("job_name") if champion else None,
        )
        if not ok:  # another promotion won the race: the deployment stands, the registry says so
            reason += "; note: the champion item changed concurrently"
        return self._decide(
            job,
            "promoted",
            reason,
            now,
            component_version=version,
            deployment_id=deployment_id,
            model_uris=uris,
            **common,
        )

    def compare(self, challenger: Challenger, champion: dict[str, Any] | None) -> tuple[bool, str]:
        if challenger.score is None:
            return False, f"the challenger has no held-out metric {self.settings.metric!r}"
        if champion is None:
            return True, f"no champion yet; challenger {self.settings.metric} = {challenger.score:.6g}"
        try:
            best = float(champion["score"])
        except (KeyError, TypeError, ValueError):
            return True, "the champion has no score on record"
        need = best * (1.0 - self.settings.min_improvement)
        if challenger.score < need:
            return True, f"challenger {challenger.score:.6g} beats champion {best:.6g} (needed < {need:.6g})"
        return False, f"challenger {challenger.score:.6g} does not beat champion {best:.6g} (needed < {need:.6g})"

    def _load(self, d: TrainingJobDetail) -> Challenger:
        assert d.ModelArtifacts is not None
        bucket, key = split_s3(d.ModelArtifacts.S3ModelArtifacts)
        data = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        model_json, tflite = read_model_tar(data)
        metrics = model_json.get("metrics")
        score = metric_value(metrics, self.settings.metric) if isinstance(metrics, dict) else None
        source = "model.json"
        if score is None:  # the trainer's log lines, as SageMaker recorded them (mean over the datasets)
            final = [
                m.Value
                for m in d.FinalMetricDataList or []
                if FINAL_METRIC.fullmatch(m.MetricName) and math.isfinite(m.Value)
            ]
            if final:
                score, source = sum(final) / len(final), "final metrics held_out_*_hybrid_rmse_pp"
        return Challenger(d.TrainingJobName, model_json, tflite, score, source)

    # -- rollout ----------------------------------------------------------------------------------
    def _release(self, ch: Challenger) -> tuple[str, dict[str, str]]:
        st = self.settings
        version = f"{st.component_version_prefix}.{self.registry.next_version_number()}"
        base = f"{normalise_prefix(st.release_prefix)}{version}/"
        uris: dict[str, str] = {}
        for name, body, ctype in (
            (MODEL_TFLITE, ch.tflite, "application/octet-stream"),
            (MODEL_JSON, json.dumps(ch.model_json, indent=1).encode(), "application/json"),
        ):
            self.s3.put_object(Bucket=st.bucket, Key=base + name, Body=body, ContentType=ctype)
            uris[name] = f"s3://{st.bucket}/{base}{name}"
        recipe = self.recipe(version, ch, uris)
        self.greengrass.create_component_version(inlineRecipe=json.dumps(recipe, indent=1).encode())
        log.info("component version created", extra={"component": st.component_name, "version": version})
        return version, uris

    def recipe(self, version: str, ch: Challenger, uris: dict[str, str]) -> dict[str, Any]:
        """The model component's recipe, shaped like recipes/com.battwin.SohModel.yaml so that nucleus lite takes
        it as well as classic: one manifest for every linux machine with ``runtime: "*"``, and a ``run`` step that
        does nothing (lite refuses a component without one). The agent finds the files under the component's
        artifact root (every version), never through a version's path."""
        return {
            "RecipeFormatVersion": "2020-01-25",
            "ComponentName": self.settings.component_name,
            "ComponentVersion": version,
            "ComponentDescription": (
                f"battwin SoH model {ch.model_json.get('version', '')} (training job {ch.job_name})"
            ),
            "ComponentPublisher": "battwin",
            "ComponentConfiguration": {
                "DefaultConfiguration": {
                    "modelVersion": str(ch.model_json.get("version", "")),
                    "trainingJob": ch.job_name,
                }
            },
            "Manifests": [
                {
                    "Platform": {"os": "linux", "runtime": "*"},
                    "Artifacts": [
                        {"URI": uris[MODEL_TFLITE], "Unarchive": "NONE", "Permission": {"Read": "ALL"}},
                        {"URI": uris[MODEL_JSON], "Unarchive": "NONE", "Permission": {"Read": "ALL"}},
                    ],
                }
            ],
            "Lifecycle": {"all": {"run": "true"}},
        }

    def _deploy(self, version: str) -> str:
        st = self.settings
        current = self._current_deployment()
        components: dict[str, Any] = dict(current.get("components") or {})
        components[st.component_name] = {"componentVersion": version}
        if st.agent_component_version:
            agent = dict(components.get(st.agent_component_name) or {})
            agent["componentVersion"] = st.agent_component_version
            components[st.agent_component_name] = agent
        elif st.agent_component_name not in components:
            log.warning("the deployment has no agent component (AGENT_COMPONENT_VERSION unset)")
        request: dict[str, Any] = {
            "targetArn": st.thing_group_arn,
            "deploymentName": f"battwin-soh-model-{version}",
            "components": components,
            "deploymentPolicies": current.get("deploymentPolicies")
            or {
                "failureHandlingPolicy": "ROLLBACK",
                "componentUpdatePolicy": {"action": "NOTIFY_COMPONENTS", "timeoutInSeconds": 60},
            },
            "tags": {"battwin:model-version": version},
        }
        if current.get("iotJobConfiguration"):
            request["iotJobConfiguration"] = current["iotJobConfiguration"]
        created = self.greengrass.create_deployment(**request)
        deployment_id = str(created.get("deploymentId", ""))
        log.info(
            "deployment created",
            extra={"deployment_id": deployment_id, "target": st.thing_group_arn, "components": sorted(components)},
        )
        return deployment_id

    def _current_deployment(self) -> dict[str, Any]:
        listed = self.greengrass.list_deployments(targetArn=self.settings.thing_group_arn, historyFilter="LATEST_ONLY")
        deployments = listed.get("deployments") or []
        if not deployments:
            return {}
        got: dict[str, Any] = self.greengrass.get_deployment(deploymentId=deployments[0]["deploymentId"])
        return got

    def _decide(self, job: str, decision: str, reason: str, now: float, **fields: Any) -> dict[str, Any]:
        self.registry.record(job, decision, reason, now=now, **fields)
        log.info(
            "training job judged",
            extra={
                "job": job,
                "decision": decision,
                "reason": reason,
                **{k: v for k, v in fields.items() if k != "model_uris"},
            },
        )
        return {"status": decision, "job_name": job, "reason": reason, **fields}


_CACHE: dict[str, Promoter] = {}


def handler(event: dict[str, Any], context: LambdaContext | None = None) -> dict[str, Any]:
    """Lambda entry point (``cloud.retrain.promote.handler``)."""
    setup_lambda_logging()
    try:
        TrainingStateChange.model_validate(event)
    except ValidationError as exc:
        log.error("unexpected event", extra={"error": str(exc)[:500], "request_id": request_id(context)})
        raise
    settings = PromoteSettings.from_env()
    promoter = _CACHE.get("promoter")
    if promoter is None or promoter.settings != settings:
        promoter = _CACHE["promoter"] = Promoter(settings)
    return promoter.handle(event)
