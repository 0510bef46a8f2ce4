"""The two nuclei the emulator can answer like: Greengrass nucleus (Java, "classic") and nucleus lite.

Each :class:`FlavourRules` states, as data, where the two differ for a component (read from their source;
the file names are given so the rules can be checked again):

classic (aws-greengrass-nucleus)
    * lifecycle keys are case-insensitive (``config/Topics.java`` keys children by ``CaseInsensitiveString``);
    * no ``Platform.runtime`` requirement; ``{Other:artifacts:path}`` and the other cross-component variables
      are resolved at deployment (``componentmanager/KernelConfigResolver.java``), unresolvable ones stay as
      written; paths have no trailing slash;
    * configuration is interpolated (``interpolateComponentConfiguration``, ``deployment/DeviceConfiguration``);
    * accessControl resources are matched by ``authorization/WildcardTrie.java``: MQTT style (``+`` / ``#`` where
      valid, ``*`` a glob) for mqttproxy (``builtin/services/mqttproxy/MqttProxyIPCAgent.java``), standard
      (``*`` only) elsewhere (``authorization/AuthorizationHandler.java``); see ``acl``;
    * ShadowManager is a component it can get; every IPC operation the emulator implements is served;
    * a component whose lifecycle (or Setenv) text changed is restarted, one whose version or install step
      changed is reinstalled, any other is left alone (``lifecyclemanager/GenericExternalService.java``).

lite (aws-greengrass-lite)
    * a recipe file is read into an 8,196-byte buffer (``modules/ggl-recipe/src/recipe.c``, ``file_mem``);
      a bigger one fails with "Insufficient memory for file";
    * a parsed recipe may hold at most 255 "subobjects" (2 per map entry, 1 per list item, YAML aliases
      expanded) and 15 levels (gg-sdk ``src/object_visit.c``: "Visited object's subobjects exceeds maximum.",
      then "Failed to do dependency resolution for deployment"); its DefaultConfiguration must fit one
      core-bus request to ggconfigd ("Insufficient memory to decode packet.", "Failed to send default config to
      ggconfigd."; ``modules/core-bus/src/server.c``): see ``lite_objects``;
    * a manifest without ``Platform.runtime`` ``"*"`` / ``"aws_nucleus_lite"`` is skipped, then
      "No lifecycle was found for linux" (``recipe.c``, ``manifest_selection``/``select_linux_lifecycle``);
    * lifecycle keys are exact: ``install``, ``startup``, ``run`` (``modules/recipe2unit/src/unit_file_generator.c``);
    * every ``{…}`` in a script or Setenv value is a recipe variable (``modules/recipe-runner/src/runner.c``,
      ``handle_escape``); only ``kernel:rootPath``, ``iot:thingName``, ``work:path``, ``artifacts:path``,
      ``artifacts:decompressedPath`` and ``configuration:/…`` exist, the paths with a trailing slash; anything
      else is "Unhandled variable substitution: <text>." (``modules/ggl-config-interpolation/src/interpolation.c``);
    * configuration is stored as written, accessControl included: v2.6.0 does NOT substitute ``{iot:thingName}``
      in accessControl resources (``modules/ggipcd/src/ipc_authz.c``; interpolation arrived after the release,
      lite commit 3572e069), so such a resource never matches; resources are matched by lite's own rules
      (``acl.lite_default_matches`` / ``acl.lite_mqtt_matches``);
    * dependencies, SOFT ones included, are resolved and a missing one fails the deployment, except
      aws.greengrass.Nucleus, TokenExchangeService and Cli, which it skips (``modules/ggdeploymentd/src/
      deployment_handler.c``);
    * a component of a deployment is redeployed (its units regenerated and started again) only when its version
      changed, the deployment updates its configuration, or it is not RUNNING/FINISHED; a changed lifecycle
      under the same version is not picked up ("Component … is already running. Will not redeploy.",
      ``deployment_handler.c``);
    * IPC: only the operations in :data:`LITE_OPERATIONS` (``modules/ggipcd/src/services``); any other is
      "Unhandled operation requested" and answered with a ServiceError without a message
      (``modules/ggipcd/src/ipc_dispatch.c``); error bodies carry ``_message`` / ``_errorCode``
      (``ipc_server.c``, ``send_stream_error``); a frame over ``GGL_IPC_MAX_MSG_LEN`` (10,000) closes the
      connection (``ipc_server.h``, ``client_ready``);
    * a component needs a run (or startup) step; the previous version's artifacts are deleted after a new
      version deploys; a ZIP artifact of a local deployment is left packed (both observed on lite 2.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Flavour = Literal["classic", "lite"]
FLAVOURS: tuple[Flavour, ...] = ("classic", "lite")

LITE_OPERATIONS = frozenset(
    {
        "PublishToTopic",
        "SubscribeToTopic",
        "PublishToIoTCore",
        "SubscribeToIoTCore",
        "GetConfiguration",
        "UpdateConfiguration",
        "SubscribeToConfigurationUpdate",
        "CreateLocalDeployment",
        "RestartComponent",
        "UpdateState",
        "ValidateAuthorizationToken",
    }
)
LITE_RUNTIMES = ("*", "aws_nucleus_lite")
#: components a classic nucleus fetches from the cloud when a deployment depends on them
CLASSIC_PLATFORM_COMPONENTS = frozenset(
    {
        "aws.greengrass.Nucleus",
        "aws.greengrass.ShadowManager",
        "aws.greengrass.Cli",
        "aws.greengrass.TokenExchangeService",
    }
)

#: dependencies lite never resolves (deployment_handler.c)
LITE_BUILT_IN_COMPONENTS = frozenset(
    {"aws.greengrass.Nucleus", "aws.greengrass.TokenExchangeService", "aws.greengrass.Cli"}
)


@dataclass(frozen=True)
class FlavourRules:
    name: Flavour
    max_recipe_bytes: int | None
    max_ipc_message_bytes: int | None
    operations: frozenset[str] | None  # None: every operation the emulator implements
    runtime_required: bool
    case_sensitive_lifecycle: bool
    every_brace_is_a_variable: bool
    cross_component_variables: bool
    trailing_slash_paths: bool
    interpolate_configuration: bool
    available_components: frozenset[str]
    needs_run_step: bool
    redeploy_on_version_only: bool
    keeps_old_artifacts: bool
    unarchives_local_artifacts: bool
    object_budgets: bool  # lite's recipe subobject/depth and config-write limits (lite_objects)
    authorization: Flavour  # whose resource-matching rules accessControl follows (acl.matcher_for)

    def serves(self, operation: str) -> bool:
        return self.operations is None or operation in self.operations

    def error_body(self, shape: str, message: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The payload of an APPLICATION_ERROR as this nucleus writes it."""
        if self.name == "lite":
            return {"_message": message, "_errorCode": shape}
        return {"message": message, **fields}


CLASSIC = FlavourRules(
    name="classic",
    max_recipe_bytes=None,
    max_ipc_message_bytes=None,
    operations=None,
    runtime_required=False,
    case_sensitive_lifecycle=False,
    every_brace_is_a_variable=False,
    cross_component_variables=True,
    trailing_slash_paths=False,
    interpolate_configuration=True,
    available_components=CLASSIC_PLATFORM_COMPONENTS,
    needs_run_step=False,
    redeploy_on_version_only=False,
    keeps_old_artifacts=True,
    unarchives_local_artifacts=True,
    object_budgets=False,
    authorization="classic",
)

LITE = FlavourRules(
    name="lite",
    max_recipe_bytes=8196,
    max_ipc_message_bytes=10_000,
    operations=LITE_OPERATIONS,
    runtime_required=True,
    case_sensitive_lifecycle=True,
    every_brace_is_a_variable=True,
    cross_component_variables=False,
    trailing_slash_paths=True,
    interpolate_configuration=False,
    available_components=LITE_BUILT_IN_COMPONENTS,
    needs_run_step=True,
    redeploy_on_version_only=True,
    keeps_old_artifacts=False,
    unarchives_local_artifacts=False,
    object_budgets=True,
    authorization="lite",
)


def rules_for(flavour: str) -> FlavourRules:
    if flavour == "classic":
        return CLASSIC
    if flavour == "lite":
        return LITE
    raise ValueError(f"unknown nucleus flavour {flavour!r}: expected one of {', '.join(FLAVOURS)}")
