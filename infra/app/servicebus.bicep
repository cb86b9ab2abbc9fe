// Service Bus (Standard) with the two session queues of the design: inbound-events (webhook ->
// processor) and outbound-messages (processor/management -> sender). Local (SAS) auth is off:
// every client uses Entra ID (the app's identity holds Data Sender + Data Receiver, rbac.bicep).

param name string
param location string = resourceGroup().location
param tags object = {}
param inboundQueueName string = 'inbound-events'
param outboundQueueName string = 'outbound-messages'

@description('Deliveries before Service Bus dead-letters a message (the triggers abandon on an outage, after a pause).')
@minValue(1)
@maxValue(2000)
param maxDeliveryCount int = 10

@description('How long an undelivered message lives before it is dead-lettered (ISO 8601).')
param messageTimeToLive string = 'P14D'

var queueNames = [
  inboundQueueName
  outboundQueueName
]

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

// Not partitioned: a partitioned entity refuses a batch that mixes session ids. Sessions keep
// each conversation in order. Duplicate detection drops a re-published message id (wamid, or
// "<wamid>:<status>") within 10 minutes; it can only be chosen when the queue is created.
resource queues 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = [for queueName in queueNames: {
  parent: namespace
  name: queueName
  properties: {
    enablePartitioning: false
    requiresSession: true
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    maxDeliveryCount: maxDeliveryCount
    deadLetteringOnMessageExpiration: true
    defaultMessageTimeToLive: messageTimeToLive
    lockDuration: 'PT1M'
    enableBatchedOperations: true
    maxSizeInMegabytes: 1024
  }
}]

output name string = namespace.name
output id string = namespace.id
output fullyQualifiedNamespace string = '${namespace.name}.servicebus.windows.net'
output inboundQueueName string = inboundQueueName
output outboundQueueName string = outboundQueueName
