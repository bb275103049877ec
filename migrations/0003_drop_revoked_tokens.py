from tortoise import migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0002_foreign_key_indexes")]

    initial = False

    operations = [
        ops.DeleteModel(name="RevokedToken"),
    ]
