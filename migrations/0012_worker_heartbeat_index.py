from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index


class Migration(migrations.Migration):
    dependencies = [("models", "0011_webhooks")]

    initial = False

    operations = [
        ops.AddIndex(
            model_name="Worker",
            index=Index(fields=["last_heartbeat"]),
        ),
    ]
