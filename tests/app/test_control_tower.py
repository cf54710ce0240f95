"""What the Control Tower proactive controls found in the example, fixed where the default was simply wrong.

The controls themselves run at synth (app.py adds the validator); test_example_app asserts nothing is left
unacknowledged and every acknowledgment is used. These tests pin the fixes, so a regression shows here by
name rather than as a finding.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest
from aws_cdk.assertions import Match

from pipeline_constructs.fleet.construct import DEFAULT_ARM_INSTANCE_TYPES, DEFAULT_X86_INSTANCE_TYPES


def _nitro_encryption_families() -> set[str]:
    """The instance families CT.AUTOSCALING.PR.11 accepts, read from the rule the validator bundles."""
    import cdklabs.cdk_validator_cfnguard._jsii as bundle

    tgz = next(Path(bundle.__file__).parent.glob("*.jsii.tgz"))
    with tarfile.open(tgz) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("ct-autoscaling-pr-11.guard"))
        rule = archive.extractfile(member).read().decode()
    return set(re.findall(r"/\^([a-z0-9-]+)\\\.", rule))


@pytest.fixture(params=["dev", "prod"])
def template(request, dev_template, prod_template):
    return dev_template if request.param == "dev" else prod_template


def test_every_launch_template_keeps_tokens_on_the_instance(template):
    """Hop limit 1 (CT.EC2.PR.2): Batch jobs take credentials from their job role and the region from their
    environment, so neither launch template needs a second hop."""
    for launch_template in template.find_resources("AWS::EC2::LaunchTemplate").values():
        options = launch_template["Properties"]["LaunchTemplateData"]["MetadataOptions"]
        assert options["HttpTokens"] == "required"
        assert options["HttpPutResponseHopLimit"] == 1


def test_batch_jobs_get_their_region_from_the_environment(template):
    """With one hop the SDK in a job container cannot ask the metadata service for its region."""
    definitions = template.find_resources("AWS::Batch::JobDefinition")
    assert definitions
    for definition in definitions.values():
        names = {e["Name"] for e in definition["Properties"]["ContainerProperties"]["Environment"]}
        assert {"AWS_REGION", "AWS_DEFAULT_REGION"} <= names


def test_dead_letter_queues_say_they_are_dead_letter_queues(template):
    """CT.SQS.PR.1: a queue without a redrive policy must carry a redrive-allow policy."""
    for logical_id, queue in template.find_resources("AWS::SQS::Queue").items():
        properties = queue["Properties"]
        assert "RedrivePolicy" in properties or properties.get("RedriveAllowPolicy") == {
            "redrivePermission": "allowAll"
        }, logical_id


def test_worker_group_names_its_availability_zones(template):
    """CT.AUTOSCALING.PR.1 reads AvailabilityZones; the names match the subnets' zones."""
    groups = template.find_resources("AWS::AutoScaling::AutoScalingGroup")
    for group in groups.values():
        zones = group["Properties"]["AvailabilityZones"]
        assert len(zones) == len(set(zones)) >= 2
        assert len(group["Properties"]["VPCZoneIdentifier"]) == len(zones)


def test_default_instance_types_encrypt_traffic_between_instances():
    families = _nitro_encryption_families()
    assert len(families) > 50  # the rule was read, not an empty match
    for instance_type in DEFAULT_X86_INSTANCE_TYPES + DEFAULT_ARM_INSTANCE_TYPES:
        assert instance_type.split(".")[0] in families, instance_type


def test_data_bucket_sends_object_events_to_eventbridge_natively(template):
    """CT.S3.PR.4, without the CDK's notifications custom resource (no extra Lambda in the stack)."""
    template.has_resource_properties(
        "AWS::S3::Bucket",
        {"NotificationConfiguration": {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}},
    )
    assert not template.find_resources("Custom::S3BucketNotifications")


def test_access_log_bucket_is_versioned(template):
    template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "VersioningConfiguration": {"Status": "Enabled"},
            "LifecycleConfiguration": {"Rules": Match.array_with([Match.object_like({"Id": "expire-access-logs"})])},
        },
    )
