from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0006_fair_rounds')]

    initial = False

    operations = [
        ops.AddField(
            model_name='AgentSession',
            name='traceparent',
            field=fields.CharField(null=True, max_length=55),
        ),
    ]
